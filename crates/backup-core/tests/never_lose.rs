//! Never lose a chunk: duplicate chunks from concurrent hosts, GC and backups killed at every
//! step, and damaged objects that are contained instead of deleted or fatal.
//!
//! Each test ends with [`agree`]: `check --read-data` is clean and every snapshot restores
//! byte for byte as it did before.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::gc::{GcOptions, collect};
use backup_core::commands::restore::{ApplyOptions, stream_item};
use backup_core::id::SnapshotId;
use backup_core::repository::{CacheOptions, Repository};
use backup_core::store::{Fault, FaultyStore, LocalStore, Store};
use common::*;
use sha2::Digest;

/// A handle on the repository at `path` with its own host cache (`None`: no cache).
async fn host(path: &Path, cache: Option<PathBuf>) -> Repository {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(path));
    open_on(store, cache).await
}

async fn open_on(store: Arc<dyn Store>, cache: Option<PathBuf>) -> Repository {
    let cache = CacheOptions {
        disabled: cache.is_none(),
        dir: cache,
    };
    Repository::open(store, &passphrase("test"), cache)
        .await
        .unwrap()
}

/// SHA-256 of every item's restored stream, by snapshot and item.
type Restored = BTreeMap<(SnapshotId, String), String>;

async fn restore_all(repo: &Repository) -> Result<Restored, String> {
    let mut out = BTreeMap::new();
    for s in repo.snapshots().await.map_err(|e| e.to_string())? {
        for it in &s.items {
            let mut w = HashWriter::default();
            stream_item(repo, s.id, it, &mut w, &ApplyOptions::default())
                .await
                .map_err(|e| format!("snapshot {} item {}: {e}", s.id, it.name))?;
            out.insert((s.id, it.name.clone()), hex::encode(w.sha.finalize()));
        }
    }
    Ok(out)
}

/// `check --read-data` from a fresh host finds nothing, and every snapshot in `expected`
/// (and no other) restores to the same bytes.
async fn agree(path: &Path, expected: &Restored) {
    let fresh = host(path, None).await;
    let c = check(
        &fresh,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let got = restore_all(&fresh).await;
    assert!(c.ok(), "check: {:?}; restores: {got:?}", c.problems);
    assert_eq!(c.orphan_packs, 0, "check counts a pack as an orphan");
    assert_eq!(got.as_ref(), Ok(expected), "restores differ from before");
}

fn gc_now() -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        max_unused: 0.0,
        ..Default::default()
    }
}

/// Markers of killed processes are ignored at once (the tests do not wait `stale_after`).
fn after_kill(mut o: GcOptions) -> GcOptions {
    o.stale_after = Duration::ZERO;
    o
}

/// Two hosts back up the same new files at the same moment: both pack every chunk, so each
/// chunk is in two packs. Returns the two snapshots' ids.
async fn two_hosts_at_once(path: &Path, src: &Path) -> (SnapshotId, SnapshotId) {
    let base = path.parent().unwrap();
    let a = host(path, Some(base.join("hostA"))).await;
    let b = host(path, Some(base.join("hostB"))).await;
    let opts = BackupOptions::default();
    let (ra, rb) = tokio::join!(
        backup(&a, volume("v", src), &opts),
        backup(&b, volume("v", src), &opts),
    );
    (ra.unwrap().snapshot, rb.unwrap().snapshot)
}

/// The reproduction from the issue: duplicate packs from two hosts, then prunes at grace 0 and
/// at the default; on 8ab3238 the second prune deleted packs other packs' indexes relied on.
#[tokio::test]
async fn duplicate_packs_from_two_hosts_survive_repeated_prunes() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 7, 1500);
    let (sa, sb) = two_hosts_at_once(&t.path(), &src).await;
    assert!(
        t.pack_files() >= 2 && t.pack_files() == t.index_files(),
        "{} packs",
        t.pack_files()
    );
    let single = {
        let probe = new_repo().await;
        backup(&probe.repo, volume("v", &src), &BackupOptions::default())
            .await
            .unwrap();
        probe.pack_files()
    };
    assert_eq!(t.pack_files(), 2 * single, "both hosts packed every chunk");
    let expected = restore_all(&host(&t.path(), None).await).await.unwrap();
    assert_eq!(expected.len(), 2);
    for round in 0..3 {
        let gc_host = host(&t.path(), None).await;
        let r = collect(&gc_host, &gc_now()).await.unwrap();
        assert!(r.deferred.is_none(), "{r:?}");
        if round == 0 {
            assert_eq!(r.packs_deleted, single, "one copy of each pack goes: {r:?}");
        }
        assert_eq!(
            t.pack_files(),
            t.index_files(),
            "no index outlives its pack"
        );
        collect(&gc_host, &GcOptions::default()).await.unwrap();
        agree(&t.path(), &expected).await;
    }
    assert_eq!(t.pack_files(), single);
    // A host whose cache still lists the deleted copies restores too.
    let a = host(&t.path(), Some(t.dir.path().join("hostA"))).await;
    assert_eq!(restore_all(&a).await.unwrap(), expected);
    assert!(sa != sb);
}

/// A repository with every kind of object GC touches: two hosts' duplicate packs, a half-dead
/// pack (repacked), a dead pack, dead and live loose chunks. Returns what the kept snapshots
/// restore to.
async fn busy_repository(t: &TestRepo) -> Restored {
    let d = |i: usize| t.dir.path().join(format!("d{i}"));
    for i in 0..4 {
        small_files(&d(i), 20 + i as u64, 60);
    }
    // Large incompressible files are loose chunks.
    std::fs::write(d(0).join("big"), random_bytes(90, 1 << 20)).unwrap();
    std::fs::write(d(3).join("big"), random_bytes(93, 1 << 20)).unwrap();
    let repo = &t.repo;
    let both = backup(
        repo,
        volume("a", &d(0))
            .into_iter()
            .chain(volume("b", &d(1)))
            .collect(),
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    backup(repo, volume("a", &d(0)), &BackupOptions::default())
        .await
        .unwrap();
    two_hosts_at_once(&t.path(), &d(2)).await;
    let dead = backup(repo, volume("x", &d(3)), &BackupOptions::default())
        .await
        .unwrap();
    repo.forget(&[both.snapshot, dead.snapshot]).await.unwrap();
    restore_all(&host(&t.path(), None).await).await.unwrap()
}

/// A copy of `pristine` at `dir` behind a store that dies after `limit` mutations.
async fn faulty_copy(
    pristine: &Path,
    dir: PathBuf,
    limit: Option<usize>,
) -> (PathBuf, Arc<FaultyStore<LocalStore>>, Repository) {
    copy_dir(pristine, &dir);
    let store = Arc::new(FaultyStore::new(LocalStore::new(&dir)));
    let repo = open_on(store.clone(), None).await;
    if let Some(n) = limit {
        store.inject(Fault::DieAfterMutations(n));
    }
    (dir, store, repo)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Prune (with repacking) stopped after each of its store mutations in turn, then run again,
/// then an ordinary prune: nothing a kept snapshot needs is ever lost.
#[tokio::test]
async fn prune_killed_at_every_step_loses_nothing() {
    let t = new_repo().await;
    let expected = busy_repository(&t).await;
    let pristine = t.dir.path().join("pristine");
    copy_dir(&t.path(), &pristine);
    // How many mutating calls an uninterrupted prune makes.
    let total = {
        let (dir, store, repo) = faulty_copy(&pristine, t.dir.path().join("count"), None).await;
        let r = collect(&repo, &gc_now()).await.unwrap();
        assert!(
            r.packs_deleted >= 2 && r.packs_repacked >= 1 && r.chunks_deleted >= 1,
            "the fixture exercises deletes and repacks: {r:?}"
        );
        agree(&dir, &expected).await;
        store.mutations()
    };
    assert!(total > 8, "{total} mutations");
    for n in 0..total {
        let (dir, _, repo) =
            faulty_copy(&pristine, t.dir.path().join(format!("kill{n}")), Some(n)).await;
        let killed = collect(&repo, &gc_now()).await;
        // The last mutation is the GC marker's removal, whose failure is not an error.
        assert!(killed.is_err() || n + 1 == total, "killed after {n}");
        // What the dead process left must already restore.
        let left = restore_all(&host(&dir, None).await).await;
        assert_eq!(left.as_ref(), Ok(&expected), "after a kill at step {n}");
        let again = host(&dir, None).await;
        let r = collect(&again, &after_kill(gc_now())).await.unwrap();
        assert!(r.deferred.is_none(), "step {n}: {r:?}");
        collect(&again, &GcOptions::default()).await.unwrap();
        agree(&dir, &expected).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A backup stopped after each of its store mutations leaves no snapshot that looks good; the
/// rerun and a prune (at grace 0, so every leftover goes) leave a sound repository.
#[tokio::test]
async fn backup_killed_at_every_step_leaves_no_false_snapshot() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 3, 80);
    std::fs::write(src.join("big"), random_bytes(5, 2 << 20)).unwrap();
    let first = t.dir.path().join("first");
    small_files(&first, 4, 10);
    backup(&t.repo, volume("old", &first), &BackupOptions::default())
        .await
        .unwrap();
    let pristine = t.dir.path().join("pristine");
    copy_dir(&t.path(), &pristine);
    let before = restore_all(&host(&pristine, None).await).await.unwrap();
    let total = {
        let (_, store, repo) = faulty_copy(&pristine, t.dir.path().join("count"), None).await;
        backup(&repo, volume("v", &src), &BackupOptions::default())
            .await
            .unwrap();
        store.mutations()
    };
    for n in 0..total {
        let (dir, _, repo) =
            faulty_copy(&pristine, t.dir.path().join(format!("kill{n}")), Some(n)).await;
        let killed = backup(&repo, volume("v", &src), &BackupOptions::default()).await;
        let fresh = host(&dir, None).await;
        let snaps = fresh.snapshots().await.unwrap();
        // The last mutation is the run marker's removal: the snapshot is complete by then.
        let committed = n + 1 >= total;
        assert_eq!(snaps.len(), 1 + usize::from(committed), "step {n}");
        if !committed {
            assert!(killed.is_err(), "step {n}");
        }
        backup(&fresh, volume("v", &src), &BackupOptions::default())
            .await
            .unwrap();
        let mut expected = before.clone();
        let all = restore_all(&fresh).await.unwrap();
        assert_eq!(all.len(), before.len() + 1 + usize::from(committed));
        expected.extend(all.into_iter().filter(|(k, _)| k.1 == "v"));
        collect(&fresh, &after_kill(gc_now())).await.unwrap();
        agree(&dir, &expected).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A flipped byte in an index object: prune keeps the pack (and says why) instead of deleting
/// it as an orphan, check names the index, and once the index is put back all is well.
#[tokio::test]
async fn a_damaged_index_keeps_its_pack() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 8, 200);
    backup(&t.repo, volume("v", &src), &BackupOptions::default())
        .await
        .unwrap();
    let expected = restore_all(&t.repo).await.unwrap();
    let index = walk(&t.path().join("index"))[0].clone();
    let good = std::fs::read(&index).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(&index, &bad).unwrap();
    let packs = t.pack_files();
    let fresh = host(&t.path(), None).await;
    let r = collect(&fresh, &gc_now()).await.unwrap();
    assert_eq!((r.packs_deleted, t.pack_files()), (0, packs), "{r:?}");
    assert!(
        r.damaged.iter().any(|d| d.contains("does not open")),
        "{r:?}"
    );
    let c = check(&fresh, &CheckOptions::default()).await.unwrap();
    assert!(
        c.problems.iter().any(|p| p
            .message
            .contains(&*index.file_name().unwrap().to_string_lossy())),
        "{:?}",
        c.problems
    );
    assert_eq!(
        c.orphan_packs, 0,
        "a pack with a damaged index is no orphan"
    );
    std::fs::write(&index, &good).unwrap();
    agree(&t.path(), &expected).await;
}

/// One damaged manifest: listed as damaged, the others restore, new backups and retention
/// work, GC deletes nothing while it stands, `forget` of it removes it.
#[tokio::test]
async fn a_damaged_manifest_is_contained() {
    let t = new_repo().await;
    let a = backup_bytes(&t.repo, "db", random_bytes(1, 3 << 20)).await;
    let b = backup_bytes(&t.repo, "db", random_bytes(2, 3 << 20)).await;
    let manifest = t.path().join(format!("snapshots/{}", a.snapshot));
    std::fs::write(&manifest, b"\x01\x02garbage").unwrap();
    let fresh = host(&t.path(), None).await;
    let listing = fresh.snapshot_listing().await.unwrap();
    assert_eq!(listing.snapshots.len(), 1);
    assert_eq!(listing.damaged.len(), 1);
    let shown = listing.damaged[0].to_string();
    assert!(
        shown.contains(&a.snapshot.to_string()) && shown.contains("forget"),
        "{shown}"
    );
    assert_eq!(fresh.find_snapshot("latest").await.unwrap().id, b.snapshot);
    let e = fresh
        .find_snapshot(&a.snapshot.to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SnapshotCorrupt { .. }), "{e:?}");
    let c = backup_bytes(&fresh, "db", random_bytes(3, 3 << 20)).await;
    let chunks = t.chunk_files();
    fresh.forget(&[b.snapshot]).await.unwrap();
    let r = collect(&fresh, &gc_now()).await.unwrap();
    assert!(r.deferred.is_some() && r.damaged.len() == 1, "{r:?}");
    assert_eq!(
        t.chunk_files(),
        chunks,
        "nothing deleted while a manifest is unreadable"
    );
    let id = fresh.find_snapshot_id(&a.snapshot.short()).await.unwrap();
    fresh.forget(&[id]).await.unwrap();
    let r = collect(&fresh, &gc_now()).await.unwrap();
    assert!(r.deferred.is_none() && r.chunks_deleted > 0, "{r:?}");
    let expected = restore_all(&fresh).await.unwrap();
    assert_eq!(expected.keys().next().unwrap().0, c.snapshot);
    agree(&t.path(), &expected).await;
}

/// A damaged key slot is named as damaged, not as a wrong passphrase; another slot still opens.
#[tokio::test]
async fn a_damaged_key_slot_is_named() {
    let t = new_repo().await;
    let second = t
        .repo
        .add_key(&passphrase("second"), FAST_KDF, None)
        .await
        .unwrap();
    let first = t.repo.slot();
    let slot = t.path().join(format!("keys/{first}"));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&slot).unwrap()).unwrap();
    let wrapped = v["wrapped"].as_str().unwrap().to_string();
    let flipped = if wrapped.starts_with('A') { "B" } else { "A" };
    v["wrapped"] = format!("{flipped}{}", &wrapped[1..]).into();
    std::fs::write(&slot, serde_json::to_vec(&v).unwrap()).unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(t.path()));
    let cache = || CacheOptions {
        dir: None,
        disabled: true,
    };
    let e = Repository::open(store.clone(), &passphrase("test"), cache())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::KeySlotDamaged { slots, .. } if slots.contains(&first.to_string())),
        "{e:?}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
    let other = Repository::open(store.clone(), &passphrase("second"), cache())
        .await
        .unwrap();
    assert_eq!(other.slot(), second.id);
    assert_eq!(other.damaged_key_slots().await.unwrap().len(), 1);
    // Not JSON at all: the same.
    std::fs::write(&slot, b"{not json").unwrap();
    let e = Repository::open(store.clone(), &passphrase("test"), cache())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeySlotDamaged { .. }), "{e:?}");
    // A wrong passphrase with no damaged slot is still that.
    std::fs::remove_file(&slot).unwrap();
    let e = Repository::open(store, &passphrase("nope"), cache())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongKey { .. }), "{e:?}");
}

/// check and restore look at the same copies: each way their views could part is built on
/// purpose, and check names every one a restore would trip over.
#[tokio::test]
async fn check_sees_what_a_restore_trips_over() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    small_files(&src, 9, 100);
    backup(&t.repo, volume("v", &src), &BackupOptions::default())
        .await
        .unwrap();
    let expected = restore_all(&t.repo).await.unwrap();
    let pack = walk(&t.path().join("packs"))[0].clone();
    let index = walk(&t.path().join("index"))[0].clone();
    let aside = t.dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    let problems = |c: &backup_core::commands::check::CheckReport| {
        c.problems
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let check_fresh = || async {
        let r = host(&t.path(), None).await;
        let c = check(
            &r,
            &CheckOptions {
                read_data: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let restored = restore_all(&r).await;
        (c, restored)
    };

    // Pack gone, index present.
    std::fs::rename(&pack, aside.join("pack")).unwrap();
    let (c, restored) = check_fresh().await;
    assert!(restored.is_err());
    let text = problems(&c);
    assert!(
        text.contains("is missing from the store") && text.contains("missing"),
        "{text}"
    );
    std::fs::rename(aside.join("pack"), &pack).unwrap();

    // Index gone, pack present.
    std::fs::rename(&index, aside.join("index")).unwrap();
    let (c, restored) = check_fresh().await;
    assert!(restored.is_err());
    assert_eq!(c.orphan_packs, 1);
    assert!(
        c.problems.iter().any(|p| p.chunk.is_some()),
        "{}",
        problems(&c)
    );
    std::fs::rename(aside.join("index"), &index).unwrap();

    // A second copy in a pack that is gone: the restore reads the other copy, check names the
    // dead index (a backup would reuse what it lists) but no chunk as missing.
    let twin = t.dir.path().join("twin");
    copy_dir(&t.path(), &twin);
    let src2 = t.dir.path().join("src2");
    small_files(&src2, 10, 100);
    let (sa, _) = two_hosts_at_once(&twin, &src2).await;
    let fresh = host(&twin, None).await;
    fresh.forget(&[sa]).await.unwrap();
    let expected_twin = restore_all(&fresh).await.unwrap();
    let packs = walk(&twin.join("packs"));
    assert!(packs.len() >= 3, "{packs:?}");
    let (c, _) = {
        // Remove each pack in turn until one removal leaves every restore working: a pack whose
        // chunks all have another copy.
        let mut found = None;
        for p in &packs {
            std::fs::rename(p, aside.join("twin-pack")).unwrap();
            let r = host(&twin, None).await;
            if restore_all(&r).await.as_ref() == Ok(&expected_twin) {
                let c = check(
                    &r,
                    &CheckOptions {
                        read_data: true,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                found = Some((c, p.clone()));
                break;
            }
            std::fs::rename(aside.join("twin-pack"), p).unwrap();
        }
        found.expect("some pack is wholly duplicated")
    };
    let text = problems(&c);
    assert!(text.contains("is missing from the store"), "{text}");
    assert!(c.problems.iter().all(|p| p.chunk.is_none()), "{text}");
    // prune removes the dead index; then all is clean.
    collect(&host(&twin, None).await, &gc_now()).await.unwrap();
    agree(&twin, &expected_twin).await;

    // A damaged copy of a chunk that has a good copy elsewhere: restores read the good one,
    // check names the damaged one (GC might keep it and delete the other).
    let twin2 = t.dir.path().join("twin2");
    copy_dir(&t.path(), &twin2);
    two_hosts_at_once(&twin2, &src2).await;
    let expected2 = restore_all(&host(&twin2, None).await).await.unwrap();
    let original: Vec<_> = walk(&t.path().join("packs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    let victim = walk(&twin2.join("packs"))
        .into_iter()
        .find(|p| !original.contains(&p.file_name().unwrap().to_owned()))
        .unwrap();
    let mut data = std::fs::read(&victim).unwrap();
    let mid = data.len() / 3;
    data[mid] ^= 0x20;
    std::fs::write(&victim, &data).unwrap();
    let r = host(&twin2, None).await;
    assert_eq!(
        restore_all(&r).await.unwrap(),
        expected2,
        "the good copies restore"
    );
    let c = check(
        &r,
        &CheckOptions {
            read_data: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        c.problems
            .iter()
            .any(|p| p.message.contains("its copy in pack")),
        "{}",
        problems(&c)
    );
    agree(&t.path(), &expected).await;
}
