//! Repositories written before the renovation still open, check clean, restore exactly, take
//! new backups and prune: a repository made by the build of 8ab3238, kept as a fixture.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::gc::collect;
use backup_core::commands::restore::{ApplyOptions, RestoreOptions, apply, plan, stream_item};
use backup_core::repository::{CacheOptions, Repository};
use backup_core::store::LocalStore;
use common::{backup_bytes, now_gc, passphrase, restore_bytes};
use sha2::{Digest, Sha256};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/repo-8ab3238")
}

/// A copy of the fixture repository (tests write to it), opened without a cache.
async fn open_copy() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixture().join("repo"))
        .arg(dir.path().join("repo"))
        .status()
        .unwrap();
    assert!(status.success());
    let repo = open_at(&dir.path().join("repo")).await;
    (dir, repo)
}

/// Opens the repository at `path` as a fresh host would (no cache).
async fn open_at(path: &Path) -> Repository {
    let store = Arc::new(LocalStore::new(path));
    let cache = CacheOptions {
        dir: None,
        disabled: true,
    };
    Repository::open(store, &passphrase("fixture-password"), cache)
        .await
        .expect("the 8ab3238 repository opens")
}

/// `sha256sum`-style lines (`HASH  ./PATH`) of every regular file under `root`, sorted.
fn sha_lines(root: &Path) -> String {
    let mut lines: Vec<String> = common::walk(root)
        .into_iter()
        .filter(|p| p.symlink_metadata().unwrap().is_file())
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let sum = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
            format!("{sum}  ./{rel}")
        })
        .collect();
    lines.sort_by(|a, b| a[66..].cmp(&b[66..]));
    lines.join("\n") + "\n"
}

/// The entries under `root` as `second.tree` lists them (type, mode, size, link target).
fn tree_lines(root: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = p.symlink_metadata().unwrap();
            let mode = md.permissions().mode() & 0o7777;
            if md.is_symlink() {
                out.push(format!(
                    "l {rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if md.is_dir() {
                out.push(format!("d {mode:o} {rel}"));
                walk(root, &p, out);
            } else {
                out.push(format!("f {mode:o} {} {rel}", md.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out.join("\n") + "\n"
}

/// `check --read-data` finds nothing.
async fn checks_clean(repo: &Repository) -> backup_core::commands::check::CheckReport {
    let opts = CheckOptions {
        read_data: true,
        ..Default::default()
    };
    let c = check(repo, &opts).await.unwrap();
    assert!(c.ok(), "{:?}", c.problems);
    c
}

async fn restore_volume(repo: &Repository, query: &str, to: &Path) -> PathBuf {
    let snap = repo.find_snapshot(query).await.unwrap();
    let opts = RestoreOptions {
        only: vec!["files".into()],
        to: Some(to.to_path_buf()),
        ..Default::default()
    };
    let p = plan(&snap, &opts).await.unwrap();
    apply(repo, &snap, &p, &ApplyOptions::default())
        .await
        .unwrap();
    to.join("files")
}

async fn dump_of(repo: &Repository, query: &str) -> String {
    let snap = repo.find_snapshot(query).await.unwrap();
    let item = snap.item("dump").unwrap();
    let mut out = Vec::new();
    stream_item(repo, snap.id, item, &mut out, &ApplyOptions::default())
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn old_repository_lists_checks_and_restores_exactly() {
    let (dir, repo) = open_copy().await;
    let snaps = repo.snapshots().await.unwrap();
    let tags: Vec<_> = snaps.iter().map(|s| s.tags.join(",")).collect();
    assert_eq!(tags, ["first", "second"]);
    assert!(snaps.iter().all(|s| s.host == "fixture"));

    let c = checks_clean(&repo).await;
    assert!(c.chunks_read > 0 && c.packs == 2, "{c:?}");

    let want = |f: &str| std::fs::read_to_string(fixture().join(f)).unwrap();
    for (query, sums) in [("first", "first.sha"), ("second", "second.sha")] {
        let id = snaps
            .iter()
            .find(|s| s.tags == [query])
            .unwrap()
            .id
            .to_string();
        let to = dir.path().join(format!("restored-{query}"));
        let root = restore_volume(&repo, &id, &to).await;
        assert_eq!(sha_lines(&root), want(sums), "snapshot {query}");
        if query == "second" {
            assert_eq!(tree_lines(&root), want("second.tree"));
            let a = root.join("app/note2.txt").symlink_metadata().unwrap();
            let b = root.join("app/sub/hard").symlink_metadata().unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(a.ino(), b.ino(), "the hard link is restored as one");
        }
    }
    // A volume written before file catalogs has none: browsing says so, with a way out.
    let old = snaps[1].item("files").unwrap();
    let e = backup_core::commands::browse::load_catalog(&repo, snaps[1].id, old)
        .await
        .unwrap_err();
    assert!(
        matches!(e, backup_core::Error::NoCatalog { .. })
            && e.hint().is_some_and(|h| h.contains("export")),
        "{e}"
    );
    let first = snaps[0].id.to_string();
    assert_eq!(dump_of(&repo, &first).await, "id,name\n1,alpha\n2,beta\n");
    assert_eq!(
        dump_of(&repo, "latest").await,
        "id,name\n1,alpha\n2,beta\n3,gamma\n"
    );
}

#[tokio::test]
async fn old_repository_takes_new_backups_and_prunes() {
    let (dir, repo) = open_copy().await;
    let data = common::random_bytes(7, 3 << 20);
    backup_bytes(&repo, "new", data.clone()).await;
    let first = repo.snapshots().await.unwrap()[0].id;
    repo.forget(&[first]).await.unwrap();
    let r = collect(&repo, &now_gc()).await.unwrap();
    assert!(r.deferred.is_none(), "{r:?}");

    // A fresh open sees the old and the new snapshots whole.
    let repo = open_at(&dir.path().join("repo")).await;
    checks_clean(&repo).await;
    assert_eq!(restore_bytes(&repo, "new").await.unwrap(), data);
    let snaps = repo.snapshots().await.unwrap();
    let second = snaps.iter().find(|s| s.tags == ["second"]).unwrap();
    let root = restore_volume(&repo, &second.id.to_string(), &dir.path().join("r")).await;
    let want = std::fs::read_to_string(fixture().join("second.sha")).unwrap();
    assert_eq!(sha_lines(&root), want);
    let by_name: BTreeMap<_, _> = snaps.iter().map(|s| (s.tags.join(","), s.id)).collect();
    assert!(!by_name.contains_key("first"), "forgotten: {by_name:?}");
}
