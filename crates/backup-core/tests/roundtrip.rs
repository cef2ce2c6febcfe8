//! Byte-exact round trips through the whole pipeline, and deduplication.

mod common;

use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::restore::{ApplyOptions, stream_item};
use backup_core::source::ReaderSource;
use common::*;
use sha2::Digest;

#[tokio::test]
async fn round_trip_small_and_boundary_sizes() {
    let t = new_repo().await;
    let p = t.repo.config().chunker_params;
    let (min, max) = (p.min_size as usize, p.max_size as usize);
    let sizes = [
        0,
        1,
        2,
        min - 1,
        min,
        min + 1,
        max - 1,
        max,
        max + 1,
        2 * max + 7,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = random_bytes(i as u64 + 1, size);
        let name = format!("s{size}");
        let report = backup_bytes(&t.repo, &name, data.clone()).await;
        assert_eq!(report.size, size as u64);
        let back = restore_bytes(&t.repo, &name).await.unwrap();
        assert!(back == data, "size {size}: restored bytes differ");
        let snap = t.repo.find_snapshot("latest").await.unwrap();
        let item = snap.item(&name).unwrap();
        assert_eq!(item.sha256, hex::encode(sha2::Sha256::digest(&data)));
        if size == 0 {
            assert!(item.chunks.is_empty(), "an empty stream has no chunks");
        }
        if size > max {
            assert!(item.chunks.len() >= 2, "size {size} must span chunks");
        }
    }
}

#[tokio::test]
async fn round_trip_300_mib_stream_without_holding_it() {
    let t = new_repo().await;
    let len = 300u64 << 20;
    let gen_reader = GenReader::new(42, len);
    let sha = gen_reader.sha.clone();
    let src = ReaderSource::new("big", Box::new(gen_reader));
    let report = backup(&t.repo, vec![Box::new(src)], &BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(report.size, len);
    let expected = hex::encode(sha.lock().unwrap().clone().finalize());
    let snap = t.repo.find_snapshot("latest").await.unwrap();
    let item = snap.item("big").unwrap();
    assert_eq!(
        item.sha256, expected,
        "manifest hash equals the hash of the generated stream"
    );
    assert!(
        item.chunks.len() > 100,
        "300 MiB at ~1 MiB average: {} chunks",
        item.chunks.len()
    );
    let mut w = HashWriter::default();
    stream_item(&t.repo, snap.id, item, &mut w, &ApplyOptions::default())
        .await
        .unwrap();
    assert_eq!(w.len, len);
    assert_eq!(hex::encode(w.sha.finalize()), expected);
}

#[tokio::test]
async fn unchanged_data_writes_no_chunks_and_a_small_change_few() {
    let t = new_repo().await;
    let mut data = random_bytes(7, 64 << 20);
    let first = backup_bytes(&t.repo, "file", data.clone()).await;
    let chunks_total = first.items[0].chunks;
    assert_eq!(
        first.chunks_new,
        t.chunk_files(),
        "every new chunk is one object"
    );
    let files_before = t.chunk_files();

    let second = backup_bytes(&t.repo, "file", data.clone()).await;
    assert_eq!(second.chunks_new, 0, "unchanged data must not write chunks");
    assert_eq!(second.stored_bytes, 0);
    assert_eq!(
        t.chunk_files(),
        files_before,
        "no new chunk objects on disk"
    );

    // Change 1% of the file, in one place, as an edited region of a large file would be.
    let start = data.len() / 3;
    let one_percent = data.len() / 100;
    for b in &mut data[start..start + one_percent] {
        *b ^= 0x5a;
    }
    let third = backup_bytes(&t.repo, "file", data.clone()).await;
    assert!(
        third.chunks_new >= 1 && third.chunks_new <= 4,
        "1% change rewrote {} of {} chunks",
        third.chunks_new,
        chunks_total
    );
    assert_eq!(t.chunk_files(), files_before + third.chunks_new);
    assert!(restore_bytes(&t.repo, "file").await.unwrap() == data);
}

#[tokio::test]
async fn one_snapshot_holds_every_item_of_a_run() {
    let t = new_repo().await;
    let a = random_bytes(1, 3000);
    let b = b"second item".to_vec();
    let report = backup(
        &t.repo,
        vec![bytes_source("a", a.clone()), bytes_source("b", b.clone())],
        &BackupOptions {
            tags: vec!["nightly".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let snaps = t.repo.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, report.snapshot);
    assert_eq!(snaps[0].source_set(), ["a", "b"]);
    assert_eq!(snaps[0].tags, ["nightly"]);
    assert_eq!(restore_bytes(&t.repo, "a").await.unwrap(), a);
    assert_eq!(restore_bytes(&t.repo, "b").await.unwrap(), b);
    let dup = backup(
        &t.repo,
        vec![bytes_source("a", vec![1]), bytes_source("a", vec![2])],
        &BackupOptions::default(),
    )
    .await;
    assert!(dup.is_err(), "duplicate item names are refused");
}

#[tokio::test]
async fn latest_is_this_hosts_newest_holding_what_is_asked_for() {
    use backup_core::repository::SnapshotFilter;
    let t = new_repo().await;
    let full = backup(
        &t.repo,
        vec![
            bytes_source("db", b"1".to_vec()),
            bytes_source("pg.app", b"2".to_vec()),
        ],
        &BackupOptions {
            tags: vec!["nightly".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let partial = backup_bytes(&t.repo, "db", b"3".to_vec()).await;
    let other_host = backup(
        &t.repo,
        vec![
            bytes_source("db", b"4".to_vec()),
            bytes_source("pg.app", b"5".to_vec()),
        ],
        &BackupOptions {
            host: Some("elsewhere".into()),
            tags: vec!["nightly".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let latest =
        |items: &[&str]| SnapshotFilter::this_host(items.iter().map(|s| s.to_string()).collect());
    let find = |f: SnapshotFilter| {
        let repo = t.repo.clone();
        async move { repo.find_snapshot_matching("latest", &f).await }
    };
    assert_eq!(
        find(latest(&["pg"])).await.unwrap().id,
        full.snapshot,
        "this host's newest holding source pg (item pg.app), not the partial run nor another host's"
    );
    assert_eq!(find(latest(&["db"])).await.unwrap().id, partial.snapshot);
    assert_eq!(find(latest(&[])).await.unwrap().id, partial.snapshot);
    let tagged = SnapshotFilter {
        tags: vec!["nightly".into()],
        ..latest(&[])
    };
    assert_eq!(find(tagged).await.unwrap().id, full.snapshot);
    let any = SnapshotFilter {
        host: None,
        ..latest(&[])
    };
    assert_eq!(find(any).await.unwrap().id, other_host.snapshot);
    let nope = find(latest(&["nope"])).await;
    assert!(
        matches!(nope, Err(backup_core::Error::ItemNotFound { .. })),
        "{nope:?}"
    );
    let stranger = SnapshotFilter {
        host: Some("stranger".into()),
        ..latest(&[])
    };
    let err = find(stranger).await.unwrap_err();
    assert!(
        matches!(err, backup_core::Error::NoSnapshotMatches { .. })
            && err.to_string().contains("elsewhere")
            && err.to_string().contains("of host stranger"),
        "names the hosts there are: {err}"
    );
    // An id names its snapshot whatever its host; its items must still be there.
    let by_id = t
        .repo
        .find_snapshot_matching(&other_host.snapshot.to_hex(), &latest(&["db"]))
        .await
        .unwrap();
    assert_eq!(by_id.id, other_host.snapshot);
    let prefix = &full.snapshot.to_hex()[..6];
    assert_eq!(
        t.repo.find_snapshot(prefix).await.unwrap().id,
        full.snapshot,
        "unique prefix"
    );
}
