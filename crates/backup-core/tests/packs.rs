//! Packs: small chunks are written many to an object, read back by range, checked, and
//! collected whole; damage to a pack or its index is named, never silently reused.

mod common;

use std::fs;
use std::path::Path;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, BackupReport, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::gc::collect;
use backup_core::commands::restore::{ApplyOptions, RestoreOptions, apply, plan};
use common::*;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn restore_volume(t: &TestRepo, item: &str, out: &str) -> backup_core::Result<()> {
    restore_with(&t.repo, t, item, out).await
}

fn read_data() -> CheckOptions {
    CheckOptions {
        read_data: true,
        ..Default::default()
    }
}

/// 800 small files (~6.4 MB) become one or two packs and their indexes, not hundreds of
/// objects; they restore byte for byte and `check --read-data` reads every packed chunk.
#[tokio::test]
async fn small_files_are_packed_and_restore_from_their_packs() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 1, 800);
    let r = backup(&t.repo, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    assert!(r.items[0].chunks > 200, "{} chunks", r.items[0].chunks);
    assert_eq!(t.chunk_files(), 0, "no small chunk is an object of its own");
    assert!(
        (1..=2).contains(&t.pack_files()),
        "{} packs",
        t.pack_files()
    );
    assert_eq!(t.index_files(), t.pack_files());
    let cached_by_the_run = walk(&t.dir.path().join("cache"))
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("index"))
        .count();
    assert_eq!(
        cached_by_the_run,
        t.index_files(),
        "the run cached the indexes it wrote"
    );
    // Packed in stream order, so a restore reads neighbours with one request.
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let packs = t.repo.packs().await.unwrap();
    let at: Vec<_> = snap
        .item("data")
        .unwrap()
        .chunks
        .iter()
        .map(|c| packs.get(c).unwrap())
        .collect();
    let out_of_order = at
        .windows(2)
        .filter(|w| w[0].pack == w[1].pack && w[1].offset != w[0].offset + u64::from(w[0].length))
        .count();
    assert_eq!(out_of_order, 0);
    let c = check(&t.repo, &read_data()).await.unwrap();
    assert!(c.ok(), "{:?}", c.problems);
    assert_eq!(
        (c.chunks_read, c.packs, c.orphan_packs),
        (c.chunks, t.pack_files(), 0)
    );
    restore_volume(&t, "data", "out").await.unwrap();
    assert_eq!(files(&t.dir.path().join("out/data")), files(&src));

    // The same files again: all found in the index.
    let again = backup(&t.repo, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(again.chunks_new, 0);

    // Index objects are cached on this host; a damaged cached copy is read from the store again.
    let cached = walk(&t.dir.path().join("cache"))
        .into_iter()
        .filter(|p| p.parent().unwrap().ends_with("index"))
        .collect::<Vec<_>>();
    assert_eq!(cached.len(), t.index_files(), "{cached:?}");
    fs::write(&cached[0], b"garbage").unwrap();
    let third = backup(&t.repo, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(third.chunks_new, 0);
    assert_eq!(
        fs::read(&cached[0]).unwrap(),
        fs::read(t.path().join("index").join(cached[0].file_name().unwrap())).unwrap(),
        "the damaged copy was replaced by the store's"
    );
}

/// A flipped byte inside a pack is the chunk's damage, named by restore and check; a damaged
/// index is reported by check and its chunks count as missing, never as present.
#[tokio::test]
async fn damage_to_a_pack_or_its_index_is_named() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 2, 100);
    backup(&t.repo, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    let pack = walk(&t.path().join("packs"))[0].clone();
    let good = fs::read(&pack).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    fs::write(&pack, &bad).unwrap();
    let e = restore_volume(&t, "data", "out").await.unwrap_err();
    assert!(
        matches!(&e, Error::ChunkCorrupt { item, .. } if item == "data"),
        "{e:?}"
    );
    let c = check(&t.repo, &read_data()).await.unwrap();
    assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
    assert!(c.problems[0].chunk.is_some());
    fs::write(&pack, &good).unwrap();

    let index = walk(&t.path().join("index"))[0].clone();
    fs::write(&index, b"not an index").unwrap();
    // A new process (fresh repository handle) reads the indexes again.
    let reopened = reopen(&t).await;
    let c = check(&reopened, &CheckOptions::default()).await.unwrap();
    assert!(
        c.problems
            .iter()
            .any(|p| p.message.contains("index object") && p.message.contains("cannot be opened")),
        "{:?}",
        c.problems
    );
    assert!(
        c.problems.iter().any(|p| p.message.contains("missing")),
        "the chunks of an unreadable index are missing: {:?}",
        c.problems
    );
}

/// GC deletes a pack (index first) once no snapshot names any of its chunks, keeps a pack that
/// still holds a referenced chunk (reporting the dead bytes), removes a pack without an index
/// and an index without a pack; what is left restores.
#[tokio::test]
async fn packs_are_collected_whole() {
    let t = new_repo().await;
    let dirs = four_dirs(&t, 10);
    let a = run(&t, &dirs, &[0]).await;
    run(&t, &dirs, &[1]).await;
    let cd = run(&t, &dirs, &[2, 3]).await;
    assert_eq!(t.pack_files(), 3, "one pack per run here");
    let c_only = run(&t, &dirs, &[2]).await;
    assert_eq!((c_only.chunks_new, t.pack_files()), (0, 3));

    // a's pack is wholly dead; c+d's pack is half dead (c is still named), and kept whole
    // when repacking is off.
    t.repo.forget(&[a.snapshot, cd.snapshot]).await.unwrap();
    let whole = backup_core::commands::gc::GcOptions {
        max_unused: 1.0,
        ..now_gc()
    };
    let r = collect(&t.repo, &whole).await.unwrap();
    assert_eq!(r.packs_repacked, 0);
    assert!(r.deferred.is_none());
    assert_eq!((r.packs_total, r.packs_deleted), (3, 1), "{r:?}");
    assert!(r.pack_bytes_unreferenced > 60 * 4000, "d's bytes: {r:?}");
    assert_eq!((t.pack_files(), t.index_files()), (2, 2));
    let c = check(&reopen(&t).await, &read_data()).await.unwrap();
    assert!(c.ok() && c.unreferenced_chunks > 0, "{c:?}");
    restore_volume(&t, "c", "out").await.unwrap();
    assert_eq!(files(&t.dir.path().join("out/c")), files(&dirs[2]));

    // A pack a killed run wrote without its index, and an index whose pack was lost.
    // A pack a killed run wrote without its index.
    let orphan = t.path().join("packs/00/00000000000000000000000000000001");
    fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    fs::write(&orphan, b"partial").unwrap();
    t.repo.forget(&[c_only.snapshot]).await.unwrap();
    let r = collect(&t.repo, &whole).await.unwrap();
    assert_eq!(
        r.packs_deleted, 2,
        "the orphan and the dead c+d pack: {r:?}"
    );
    assert!(!orphan.exists());
    assert_eq!((t.pack_files(), t.index_files()), (1, 1));
}

/// Directories a, b, c and d of 60 small files each (the items `run` backs up).
fn four_dirs(t: &TestRepo, seed: u64) -> Vec<std::path::PathBuf> {
    ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let d = t.dir.path().join(n);
            small_files(&d, seed + i as u64, 60);
            d
        })
        .collect()
}

async fn run(t: &TestRepo, dirs: &[std::path::PathBuf], items: &[usize]) -> BackupReport {
    let mut sources = Vec::new();
    for &i in items {
        sources.extend(volume(["a", "b", "c", "d"][i], &dirs[i]));
    }
    backup(&t.repo, sources, &BackupOptions::default())
        .await
        .unwrap()
}

/// An index whose pack is gone would make backups reuse chunks that are not there: GC removes
/// it, and the next backup stores those chunks again.
#[tokio::test]
async fn an_index_without_its_pack_is_removed_and_its_chunks_stored_again() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 20, 50);
    let first = backup(&t.repo, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    t.repo.forget(&[first.snapshot]).await.unwrap();
    for p in walk(&t.path().join("packs")) {
        fs::remove_file(p).unwrap();
    }
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert_eq!(r.dangling_indexes_removed, 1, "{r:?}");
    assert_eq!(t.index_files(), 0);
    let fresh = reopen(&t).await;
    let again = backup(&fresh, volume("data", &src), &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(again.chunks_new, again.items[0].chunks);
    let c = check(&fresh, &read_data()).await.unwrap();
    assert!(c.ok(), "{:?}", c.problems);
}

async fn reopen(t: &TestRepo) -> backup_core::repository::Repository {
    use backup_core::repository::{CacheOptions, Repository};
    use backup_core::store::{LocalStore, Store};
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(LocalStore::new(t.path()));
    // No local cache: what a fresh host sees.
    let cache = CacheOptions {
        dir: None,
        disabled: true,
    };
    Repository::open(store, &passphrase("test"), cache)
        .await
        .unwrap()
}

/// Restores `item` of the latest snapshot with `repo` (which may hold an old index).
async fn restore_with(
    repo: &backup_core::repository::Repository,
    t: &TestRepo,
    item: &str,
    out: &str,
) -> backup_core::Result<()> {
    let snap = repo.find_snapshot("latest").await?;
    let ropts = RestoreOptions {
        to: Some(t.dir.path().join(out)),
        only: vec![item.to_string()],
        ..Default::default()
    };
    let p = plan(&snap, &ropts).await?;
    apply(repo, &snap, &p, &ApplyOptions::default()).await?;
    Ok(())
}

/// A pack half of whose chunks no snapshot names is rewritten with the other half, and the old
/// one deleted; a restore that read the index before still finds every chunk; a pack with a
/// damaged chunk is left as it is and named.
#[tokio::test]
async fn half_dead_packs_are_repacked() {
    let t = new_repo().await;
    let dirs = four_dirs(&t, 30);
    let cd = run(&t, &dirs, &[2, 3]).await;
    run(&t, &dirs, &[2]).await;
    let old_packs = walk(&t.path().join("packs"));
    assert_eq!(old_packs.len(), 1);
    let stale = reopen(&t).await;
    stale.packs().await.unwrap();
    t.repo.forget(&[cd.snapshot]).await.unwrap();

    let dry = backup_core::commands::gc::GcOptions {
        dry_run: true,
        ..now_gc()
    };
    let r = collect(&t.repo, &dry).await.unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert_eq!(
        walk(&t.path().join("packs")),
        old_packs,
        "a dry run changes nothing"
    );

    let r = collect(&t.repo, &now_gc()).await.unwrap();
    let pack_size = fs::metadata(&old_packs[0]).map(|m| m.len()).unwrap_or(0);
    assert_eq!(pack_size, 0, "the old pack is deleted");
    assert_eq!(r.packs_repacked, 1, "{r:?}");
    assert!(
        r.repack_bytes_written > 60 * 4000 && r.repack_bytes_freed > 60 * 4000,
        "c's chunks copied, d's freed: {r:?}"
    );
    assert_eq!(r.pack_bytes_unreferenced, 0, "{r:?}");
    assert_eq!((t.pack_files(), t.index_files()), (1, 1));
    let c = check(&reopen(&t).await, &read_data()).await.unwrap();
    assert!(c.ok() && c.unreferenced_chunks == 0, "{c:?}");
    restore_with(&stale, &t, "c", "out").await.unwrap();
    assert_eq!(files(&t.dir.path().join("out/c")), files(&dirs[2]));

    // a and b in one pack, then a alone; a's first chunk damaged in the pack.
    let ab = run(&t, &dirs, &[0, 1]).await;
    let a = run(&t, &dirs, &[0]).await;
    t.repo.forget(&[ab.snapshot]).await.unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(snap.id, a.snapshot);
    let first = snap.item("a").unwrap().chunks[0];
    let at = t.repo.reload_packs().await.unwrap().get(&first).unwrap();
    let pack_file = t.path().join(at.pack.object_key());
    let mut bytes = fs::read(&pack_file).unwrap();
    bytes[at.offset as usize + 40] ^= 1;
    fs::write(&pack_file, &bytes).unwrap();
    let r = collect(&t.repo, &now_gc()).await.unwrap();
    assert_eq!(r.packs_repacked, 0, "{r:?}");
    assert_eq!(r.repack_skipped.len(), 1, "{r:?}");
    assert!(
        r.repack_skipped[0].contains(&at.pack.to_string())
            && r.repack_skipped[0].contains(&first.to_string()),
        "{:?}",
        r.repack_skipped
    );
    assert!(pack_file.exists(), "the damaged pack is kept");
}

/// A repack that outlasts `stale_after` keeps its marker fresh: a backup starting meanwhile
/// waits for it (and gives up), rather than taking the GC for a dead one and reusing chunks
/// that are about to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_repack_keeps_its_marker_alive() {
    use backup_core::store::{Fault, FaultyStore, LocalStore};
    use std::sync::Arc;
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(LocalStore::new(dir.path().join("repo"))));
    let repo = init_uncached(faulty.clone()).await;
    let (c, d) = (dir.path().join("c"), dir.path().join("d"));
    small_files(&c, 50, 60);
    small_files(&d, 51, 60);
    let mut both = volume("c", &c);
    both.extend(volume("d", &d));
    let cd = backup(&repo, both, &BackupOptions::default())
        .await
        .unwrap();
    backup(&repo, volume("c", &c), &BackupOptions::default())
        .await
        .unwrap();
    repo.forget(&[cd.snapshot]).await.unwrap();

    faulty.inject(Fault::DelayGetsWithPrefix(
        "packs/".into(),
        Duration::from_millis(1500),
    ));
    let stale_after = Duration::from_millis(400);
    let gc_opts = backup_core::commands::gc::GcOptions {
        stale_after,
        ..now_gc()
    };
    let gc = tokio::spawn({
        let repo = repo.clone();
        async move { collect(&repo, &gc_opts).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waited = backup_core::commands::gc::RunMarker::start(&repo, stale_after).await;
    assert!(
        !gc.is_finished(),
        "the GC is still repacking when the backup gives up"
    );
    let err = waited.expect_err("the backup waits for the live GC");
    assert!(err.to_string().contains("garbage collection"), "{err}");
    let r = gc.await.unwrap().unwrap();
    assert_eq!(r.packs_repacked, 1, "{r:?}");
}
