//! Volumes: tree round trips with metadata, safe extraction, and target handling.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use backup_core::Error;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::restore::{ApplyOptions, RestoreOptions, TargetState, apply, plan};
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::manifest::ItemKind;
use backup_core::source::ReaderSource;
use common::*;
use filetime::FileTime;

/// type, mode, mtime, size/target, content hash of every entry below `root`.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            let desc = if md.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                walk(root, &p, out);
                format!("dir {:o} mtime {}", md.mode() & 0o7777, md.mtime())
            } else {
                let content = fs::read(&p).unwrap();
                format!(
                    "file {:o} mtime {} len {} hash {:x}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    content.len(),
                    content
                        .iter()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(*b as u64))
                )
            };
            out.insert(rel, desc);
        }
    }
    walk(root, root, &mut out);
    out
}

fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/deep/er")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("cache")).unwrap();
    fs::write(root.join("a/hello.txt"), "hello\n").unwrap();
    fs::write(root.join("a/deep/er/big.bin"), random_bytes(9, 3 << 20)).unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    fs::write(root.join("script.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(root.join("secret"), "s").unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("cache/junk"), "x").unwrap();
    fs::write(root.join("note.tmp"), "x").unwrap();
    let long = "n".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("f".repeat(150)), "long names").unwrap();
    fs::write(root.join("a/owned"), "chowned").unwrap();
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        std::os::unix::fs::chown(root.join("a/owned"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::chown(root.join("a/deep"), Some(4321), Some(8765)).unwrap();
    }
    symlink("a/hello.txt", root.join("rel-link")).unwrap();
    symlink("/etc/hostname", root.join("abs-link")).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    fs::hard_link(root.join("a/hello.txt"), root.join("hard")).unwrap();
    let ro = root.join("readonly");
    fs::create_dir(&ro).unwrap();
    fs::write(ro.join("inside"), "r").unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    // Distinct, old mtimes everywhere, set deepest first so parents keep theirs.
    let mut t = 1_500_000_000i64;
    let mut paths: Vec<_> = describe(root).keys().cloned().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for p in paths {
        let full = root.join(&p);
        t += 3600;
        filetime::set_symlink_file_times(
            &full,
            FileTime::from_unix_time(t, 0),
            FileTime::from_unix_time(t, 0),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn volume_round_trip_preserves_contents_modes_mtimes_links() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    build_tree(&src);
    let opts = VolumeOptions {
        exclude: vec!["*.tmp".into(), "cache/**".into()],
        ..Default::default()
    };
    let report = backup(
        &t.repo,
        vec![Box::new(VolumeSource::new("data", &src, opts))],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.items[0].kind, ItemKind::Volume);
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let facts = &snap.item("data").unwrap().facts;
    assert_eq!(facts["hardlinks"], 1);
    assert_eq!(facts["symlinks"], 3);
    assert_eq!(facts["excluded"], 2, "note.tmp and cache/junk");

    let out = t.dir.path().join("out");
    let ropts = RestoreOptions {
        to: Some(out.clone()),
        ..Default::default()
    };
    let p = plan(&snap, &ropts).await.unwrap();
    assert_eq!(p.items[0].target_state, TargetState::Missing);
    apply(&t.repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    let restored = out.join("data");

    let mut want = describe(&src);
    want.remove("note.tmp");
    want.remove("cache/junk");
    // The excluded file's removal changed cache/'s listing but not its recorded mtime.
    let got = describe(&restored);
    assert_eq!(got, want);
    let a = fs::metadata(restored.join("a/hello.txt")).unwrap();
    let h = fs::metadata(restored.join("hard")).unwrap();
    assert_eq!(a.ino(), h.ino(), "hard link restored as a link");
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        // As root, numeric ownership round-trips too.
        assert_eq!(fs::metadata(restored.join("a/owned")).unwrap().uid(), 4321);
        assert_eq!(fs::metadata(restored.join("a/owned")).unwrap().gid(), 8765);
        assert_eq!(
            fs::metadata(restored.join("a/deep")).unwrap().uid(),
            4321,
            "directory owner"
        );
    }
    let root_mode = fs::metadata(&restored).unwrap().mode() & 0o7777;
    assert_eq!(
        root_mode,
        fs::metadata(&src).unwrap().mode() & 0o7777,
        "volume root mode"
    );

    // Second backup of the unchanged tree: same stream, nothing new.
    let again = backup(
        &t.repo,
        vec![Box::new(VolumeSource::new(
            "data",
            &src,
            VolumeOptions {
                exclude: vec!["*.tmp".into(), "cache/**".into()],
                ..Default::default()
            },
        ))],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        again.chunks_new, 0,
        "deterministic tar of an unchanged tree dedups fully"
    );
    fs::set_permissions(src.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(restored.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn occupied_target_is_refused_unless_forced() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("new"), "new").unwrap();
    backup(
        &t.repo,
        vec![Box::new(VolumeSource::new(
            "v",
            &src,
            VolumeOptions::default(),
        ))],
        &BackupOptions::default(),
    )
    .await
    .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let out = t.dir.path().join("out");
    fs::create_dir_all(out.join("v")).unwrap();
    fs::write(out.join("v/old"), "old").unwrap();
    let p = plan(
        &snap,
        &RestoreOptions {
            to: Some(out.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(p.conflicts().len(), 1);
    let e = apply(&t.repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TargetNotEmpty { .. }), "{e:?}");
    assert_eq!(e.exit_code(), 7);
    assert_eq!(
        fs::read_to_string(out.join("v/old")).unwrap(),
        "old",
        "refused restore touched nothing"
    );
    let p = plan(
        &snap,
        &RestoreOptions {
            to: Some(out.clone()),
            force: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    apply(&t.repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    assert!(
        !out.join("v/old").exists(),
        "forced restore replaces the target"
    );
    assert_eq!(fs::read_to_string(out.join("v/new")).unwrap(), "new");
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["v"],
        "no temporary or old directories left behind"
    );
}

/// A raw tar header with arbitrary name/link bytes (the tar crate refuses to build evil ones).
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn evil_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        raw_entry(&mut out, name, *kind, link, data);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test]
async fn archives_that_escape_the_target_are_refused_with_nothing_written_outside() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let t = new_repo().await;
    let outside = t.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let outside_s = outside.display().to_string();
    let abs_target = format!("{outside_s}/abs-evil");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absolute", evil_tar(&[(&abs_target, Regular, "", b"x")])),
        (
            "dotdot",
            evil_tar(&[
                ("ok/", Directory, "", b""),
                ("ok/../../outside/dotdot-evil", Regular, "", b"x"),
            ]),
        ),
        (
            "symlink-then-write",
            evil_tar(&[
                ("link", Symlink, &outside_s, b""),
                ("link/through-symlink", Regular, "", b"x"),
            ]),
        ),
        (
            "hardlink-out",
            evil_tar(&[("h", Link, "../outside/victim", b"")]),
        ),
        (
            "symlink-replaced",
            evil_tar(&[("f", Regular, "", b"1"), ("f", Symlink, &outside_s, b"")]),
        ),
        (
            "file-through-symlink",
            evil_tar(&[
                ("v", Symlink, &format!("{outside_s}/victim"), b""),
                ("v", Regular, "", b"x"),
            ]),
        ),
        (
            "file-twice",
            evil_tar(&[("f", Regular, "", b"1"), ("f", Regular, "", b"2")]),
        ),
    ];
    fs::write(outside.join("victim"), "keep").unwrap();
    for (name, tarball) in cases {
        let src = ReaderSource::new(name, Box::new(std::io::Cursor::new(tarball)))
            .with_kind(ItemKind::Volume, "tar");
        backup(&t.repo, vec![Box::new(src)], &BackupOptions::default())
            .await
            .unwrap();
        let snap = t.repo.find_snapshot("latest").await.unwrap();
        let dest = t.dir.path().join("restore");
        let p = plan(
            &snap,
            &RestoreOptions {
                to: Some(dest.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let e = apply(&t.repo, &snap, &p, &ApplyOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::UnsafeArchive { .. }),
            "{name}: expected UnsafeArchive, got {e:?}"
        );
        assert_eq!(e.exit_code(), 7);
        let mut names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["victim"],
            "{name}: something was written outside the target"
        );
        assert_eq!(fs::read_to_string(outside.join("victim")).unwrap(), "keep");
        assert!(
            !dest.join(name).exists(),
            "{name}: a refused restore puts nothing in place"
        );
        if dest.exists() {
            assert_eq!(
                fs::read_dir(&dest).unwrap().count(),
                0,
                "{name}: temporary directory removed"
            );
        }
    }
}

fn volume(src: &Path) -> Vec<Box<dyn backup_core::source::Source>> {
    vec![Box::new(VolumeSource::new(
        "data",
        src,
        VolumeOptions::default(),
    ))]
}

fn fact(snap: &backup_core::manifest::Snapshot, name: &str) -> u64 {
    snap.item("data").unwrap().facts[name].as_u64().unwrap()
}

async fn restore_and_compare(t: &TestRepo, src: &Path, out: &str) {
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    restore_snapshot(t, &snap, out).await.unwrap();
    assert_eq!(
        describe(&t.dir.path().join(out).join("data")),
        describe(src)
    );
}

/// Large files unchanged since the last backup are taken from the file cache without being
/// read, and the snapshot is the same one reading them would have made; a changed file (new
/// content, or only a chmod) is read again; a cache naming chunks no snapshot holds any more,
/// or a damaged cache, is not trusted.
#[tokio::test]
async fn unchanged_large_files_come_from_the_file_cache() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big.bin"), random_bytes(1, 3 << 20)).unwrap();
    let text: Vec<u8> = (0..(2 << 20))
        .map(|i| b"lifeboat log line\n"[i % 18])
        .collect();
    fs::write(src.join("sub/log.txt"), &text).unwrap();
    fs::write(src.join("sub/small.txt"), "small").unwrap();
    // Files changed within the last second are not cached (see RACY_NS).
    std::thread::sleep(std::time::Duration::from_millis(1200));

    backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let first = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&first, "files_from_cache"), 0);
    let cache = t.repo.file_cache_path("data").unwrap();
    assert!(cache.exists(), "file cache written at {}", cache.display());

    let again = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let second = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(
        fact(&second, "files_from_cache"),
        2,
        "big.bin and sub/log.txt"
    );
    assert_eq!(fact(&second, "bytes_from_cache"), (3 << 20) + (2 << 20));
    assert_eq!(again.chunks_new, 0);
    let (a, b) = (first.item("data").unwrap(), second.item("data").unwrap());
    assert_eq!(b.digest, backup_core::manifest::DigestKind::ChunkIds);
    assert_eq!(
        (&a.chunks, &a.sha256, a.size),
        (&b.chunks, &b.sha256, b.size)
    );
    restore_and_compare(&t, &src, "out1").await;

    // New content, and a chmod alone: both must be read again.
    let mut grown = random_bytes(1, 3 << 20);
    grown.extend_from_slice(b"appended");
    fs::write(src.join("big.bin"), &grown).unwrap();
    fs::set_permissions(src.join("sub/log.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let third = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&snap, "files_from_cache"), 0);
    assert!(third.chunks_new > 0);
    restore_and_compare(&t, &src, "out2").await;

    // Every snapshot forgotten and collected: the cache's chunks are gone, so nothing of it
    // may be used (the files are read and stored again).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let ids = t.repo.snapshot_ids().await.unwrap();
    t.repo.forget(&ids).await.unwrap();
    let gc = backup_core::commands::gc::GcOptions {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    };
    backup_core::commands::gc::collect(&t.repo, &gc)
        .await
        .unwrap();
    let fresh = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&snap, "files_from_cache"), 0);
    assert!(fresh.stored_bytes > 3 << 20, "big.bin stored again");
    restore_and_compare(&t, &src, "out3").await;

    // A damaged cache is ignored, not trusted and not fatal.
    fs::write(&cache, b"not a sealed cache").unwrap();
    backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&snap, "files_from_cache"), 0);
    restore_and_compare(&t, &src, "out4").await;
    // ...and rewritten whole by that run.
    backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&snap, "files_from_cache"), 2);
}

/// A file changed too recently to be cached is still cut as a file, so the snapshot made once
/// it has settled (and is cached) has exactly the same chunks.
#[tokio::test]
async fn racy_files_are_cut_like_cached_ones() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), random_bytes(3, 2 << 20)).unwrap();
    fs::write(src.join("small.txt"), "small").unwrap();
    backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let racy = t.repo.find_snapshot("latest").await.unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let settled = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(settled.chunks_new, 0, "same cuts as the racy run");
    let cached = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    assert_eq!(fact(&snap, "files_from_cache"), 1);
    assert_eq!(cached.chunks_new, 0);
    let (a, b) = (racy.item("data").unwrap(), snap.item("data").unwrap());
    assert_eq!((&a.chunks, &a.sha256), (&b.chunks, &b.sha256));
}

/// Small files are grouped into chunks of a few files, cut at file boundaries: an edit to one
/// stores about its group, not a stretch of the between-files chunk size (128 KiB minimum)
/// around it, and the groups after it are the same chunks as before.
#[tokio::test]
async fn an_edited_small_file_stores_about_its_group() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible, so stored bytes are plain bytes: 300 files of 3–9 KB, ~1.8 MB in all.
    for i in 0..300u64 {
        let len = 3000 + (i * 7919 % 6000) as usize;
        fs::write(src.join(format!("f{i:03}.txt")), random_bytes(100 + i, len)).unwrap();
    }
    let first = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    assert!(
        first.items[0].chunks >= 40,
        "groups of a few files, not one chunk of 1.8 MB: {} chunks",
        first.items[0].chunks
    );
    let before = t.repo.find_snapshot("latest").await.unwrap();
    let mut edited = fs::read(src.join("f150.txt")).unwrap();
    edited.splice(100..100, random_bytes(9, 500));
    fs::write(src.join("f150.txt"), edited).unwrap();
    let second = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    assert!(
        second.chunks_new <= 3 && second.stored_bytes < 80_000,
        "{} chunks, {} bytes stored for a 500-byte edit",
        second.chunks_new,
        second.stored_bytes
    );
    let after = t.repo.find_snapshot("latest").await.unwrap();
    let (a, b) = (before.item("data").unwrap(), after.item("data").unwrap());
    let shared = b.chunks.iter().filter(|c| a.chunks.contains(c)).count();
    assert!(
        shared + 3 >= a.chunks.len(),
        "{shared} of {} chunks kept",
        a.chunks.len()
    );
    restore_and_compare(&t, &src, "out").await;
}

async fn restore_snapshot(
    t: &TestRepo,
    snap: &backup_core::manifest::Snapshot,
    out: &str,
) -> backup_core::Result<()> {
    let ropts = RestoreOptions {
        to: Some(t.dir.path().join(out)),
        ..Default::default()
    };
    let p = plan(snap, &ropts).await?;
    apply(&t.repo, snap, &p, &ApplyOptions::default()).await?;
    Ok(())
}

/// A volume's digest is taken over its chunk ids (a second hash of every byte saved), so a
/// restore must recompute each chunk's id: a chunk sealed with the right key under the wrong
/// id passes the tag and the digest, and only that check refuses it. Items written with the
/// older chunk-list digest still restore.
#[tokio::test]
async fn volumes_are_digested_over_chunk_ids_and_restores_prove_each_id() {
    use backup_core::manifest::DigestKind;
    use sha2::{Digest, Sha256};
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), random_bytes(4, 3 << 20)).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("s{i}.txt")), format!("small file {i}\n")).unwrap();
    }
    backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let item = snap.item("data").unwrap().clone();
    assert_eq!(item.digest, DigestKind::ChunkIds);
    let mut over_ids = Sha256::new();
    for id in &item.chunks {
        over_ids.update(id.0);
    }
    assert_eq!(item.sha256, hex::encode(over_ids.finalize()));
    restore_and_compare(&t, &src, "out").await;

    // The same item as an older Lifeboat wrote it: digest over each chunk's plain SHA-256.
    let mut over_plain = Sha256::new();
    for id in &item.chunks {
        let plain = backup_core::content::fetch_chunk(&t.repo, snap.id, "data", *id)
            .await
            .unwrap();
        over_plain.update(Sha256::digest(&plain));
    }
    let mut legacy = snap.clone();
    legacy.id = backup_core::id::SnapshotId::random();
    for it in &mut legacy.items {
        it.digest = DigestKind::ChunkList;
        it.sha256 = hex::encode(over_plain.clone().finalize());
    }
    t.repo.save_snapshot(&legacy).await.unwrap();
    restore_snapshot(&t, &legacy, "legacy").await.unwrap();
    assert_eq!(describe(&t.dir.path().join("legacy/data")), describe(&src));

    // A loose chunk of big.bin replaced by other bytes sealed under its id.
    let loose = item
        .chunks
        .iter()
        .find(|id| t.path().join(id.object_key()).exists())
        .copied()
        .expect("big.bin has a loose chunk");
    let key = loose.object_key();
    let real = fs::read(t.path().join(&key)).unwrap();
    let honest = backup_core::content::fetch_chunk(&t.repo, snap.id, "data", loose)
        .await
        .unwrap();
    let forged = t
        .repo
        .keys()
        .seal_chunk(&loose, &random_bytes(5, honest.len()), 1);
    fs::write(t.path().join(&key), &forged).unwrap();
    let err = restore_snapshot(&t, &snap, "forged").await.unwrap_err();
    assert!(
        matches!(&err, Error::ChunkCorrupt { chunk, .. } if *chunk == loose),
        "{err}"
    );
    assert!(!t.dir.path().join("forged/data/big.bin").exists());
    fs::write(t.path().join(&key), real).unwrap();
    restore_snapshot(&t, &snap, "again").await.unwrap();
}

/// A file cache that cannot be written does not fail the backup, but is reported: otherwise
/// every later run reads every file again without anyone knowing why.
#[tokio::test]
async fn a_file_cache_that_cannot_be_saved_is_a_warning() {
    let t = new_repo().await;
    let src = t.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), random_bytes(6, 2 << 20)).unwrap();
    let cache = t.repo.file_cache_path("data").unwrap();
    let parent = cache.parent().unwrap().to_path_buf();
    fs::create_dir_all(parent.parent().unwrap()).unwrap();
    let _ = fs::remove_dir_all(&parent);
    fs::write(&parent, b"in the way").unwrap();
    let r = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains(&cache.display().to_string()) && r.warnings[0].contains("data"),
        "{:?}",
        r.warnings
    );
    fs::remove_file(&parent).unwrap();
    let r = backup(&t.repo, volume(&src), &BackupOptions::default())
        .await
        .unwrap();
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert!(cache.exists());
}

/// Three volumes: restored at once (all three start before any ends); a failing item does not
/// stop the others already running, and one at a time, nothing starts after a failure.
#[tokio::test]
async fn items_restore_at_once_and_a_failure_starts_nothing_new() {
    use backup_core::commands::restore::{ApplyEvent, ApplyEvents, Target};
    use std::sync::{Arc, Mutex};
    let t = new_repo().await;
    let mut sources: Vec<Box<dyn backup_core::source::Source>> = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let src = t.dir.path().join(name);
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("blob"), random_bytes(i as u64, 4 << 20)).unwrap();
        sources.push(Box::new(VolumeSource::new(
            *name,
            &src,
            VolumeOptions::default(),
        )));
    }
    backup(&t.repo, sources, &BackupOptions::default())
        .await
        .unwrap();
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let run = |out: &str, items_at_once: usize, failing_first: bool| {
        let (t, snap, out) = (&t, &snap, t.dir.path().join(out));
        async move {
            let mut p = plan(
                snap,
                &RestoreOptions {
                    to: Some(out.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            if failing_first {
                p.items[2].target = Target::Command("exit 3".into());
                p.items.rotate_right(1);
            }
            let log: Arc<Mutex<Vec<String>>> = Arc::default();
            let events = {
                let log = log.clone();
                ApplyEvents(Arc::new(move |e| {
                    log.lock().unwrap().push(match e {
                        ApplyEvent::Started(i) => format!("start {}", i.name),
                        ApplyEvent::Restored(i, _) => format!("done {}", i.name),
                        ApplyEvent::Failed(i, _) => format!("fail {}", i.name),
                        ApplyEvent::NotStarted(i) => format!("skip {}", i.name),
                    })
                }))
            };
            let opts = ApplyOptions {
                items_at_once,
                events: Some(events),
                ..Default::default()
            };
            let r = apply(&t.repo, snap, &p, &opts).await;
            let log = log.lock().unwrap().clone();
            (r, log, out)
        }
    };

    let (r, log, out) = run("all", 3, false).await;
    let report = r.unwrap();
    let names: Vec<&str> = report.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"], "reported in plan order");
    assert!(
        log[..3].iter().all(|e| e.starts_with("start")),
        "all three started before any ended: {log:?}"
    );
    for name in ["a", "b", "c"] {
        assert_eq!(
            fs::read(out.join(name).join("blob")).unwrap(),
            fs::read(t.dir.path().join(name).join("blob")).unwrap()
        );
    }

    let (r, log, out) = run("fail-at-once", 3, true).await;
    let e = r.unwrap_err();
    assert!(e.to_string().contains("item c"), "the failed item: {e}");
    assert!(log.contains(&"fail c".to_string()), "{log:?}");
    assert!(
        log.contains(&"done a".to_string()) && log.contains(&"done b".to_string()),
        "items already running finish: {log:?}"
    );
    assert!(out.join("a/blob").exists() && out.join("b/blob").exists());

    let (r, log, out) = run("fail-one-by-one", 1, true).await;
    assert!(r.is_err());
    assert_eq!(log, ["start c", "fail c", "skip a", "skip b"]);
    assert!(!out.join("a").exists() && !out.join("b").exists());
}
