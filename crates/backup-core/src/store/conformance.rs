//! The shared conformance suite every `Store` implementation must pass (run from its tests).
//!
//! It panics with a message naming the broken guarantee. The store should be empty, or at
//! least hold nothing under `conformance/`.

use std::sync::Arc;

use super::{PutMode, Store};
use crate::error::Error;

const P: &str = "conformance";

/// Runs every check against `store`.
pub async fn run(store: &dyn Store) {
    put_get_head(store).await;
    batched(store).await;
    create_only(store).await;
    ranges(store).await;
    listing(store).await;
    deletes(store).await;
    invalid_keys(store).await;
    large_object(store).await;
    cleanup(store).await;
}

/// Runs the concurrency check; needs an `Arc` to share the store across tasks.
pub async fn run_concurrent(store: Arc<dyn Store>) {
    let key = format!("{P}/race");
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = store.clone();
        let k = key.clone();
        tasks.push(tokio::spawn(async move {
            s.put(&k, vec![i; 1000], PutMode::CreateOnly)
                .await
                .map(|_| i)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("concurrent create-only put failed with {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one create-only put must win, got {winners:?}"
    );
    assert_eq!(
        store.get(&key).await.unwrap(),
        vec![winners[0]; 1000],
        "the winner's bytes are stored"
    );
    store.delete(&key).await.unwrap();
}

/// A batched put is an ordinary put to readers (atomic, create-only honoured), and a flush
/// with nothing pending succeeds.
async fn batched(s: &dyn Store) {
    let k = format!("{P}/batched/one");
    s.put_batched(&k, b"batched".to_vec(), PutMode::CreateOnly)
        .await
        .unwrap();
    assert_eq!(
        s.get(&k).await.unwrap(),
        b"batched",
        "a batched put is readable at once"
    );
    let again = s
        .put_batched(&k, b"other".to_vec(), PutMode::CreateOnly)
        .await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "a batched create-only put over an existing key must fail with AlreadyExists, got {again:?}"
    );
    s.put_batched(&k, b"replaced".to_vec(), PutMode::Overwrite)
        .await
        .unwrap();
    s.flush().await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.get(&k).await.unwrap(), b"replaced");
    s.delete(&k).await.unwrap();
}

async fn put_get_head(s: &dyn Store) {
    let k = format!("{P}/a/one");
    s.put(&k, b"hello".to_vec(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get(&k).await.unwrap(), b"hello");
    let m = s.head(&k).await.unwrap();
    assert_eq!(
        (m.key.as_str(), m.size),
        (k.as_str(), 5),
        "head reports key and size"
    );
    s.put(&k, b"replaced!".to_vec(), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(s.get(&k).await.unwrap(), b"replaced!", "overwrite replaces");
    let empty = format!("{P}/empty");
    s.put(&empty, Vec::new(), PutMode::CreateOnly)
        .await
        .unwrap();
    assert_eq!(s.get(&empty).await.unwrap(), b"", "empty objects exist");
    assert_eq!(s.head(&empty).await.unwrap().size, 0);
    for r in [
        s.get(&format!("{P}/missing")).await.map(|_| ()),
        s.head(&format!("{P}/missing")).await.map(|_| ()),
    ] {
        assert!(
            matches!(r, Err(Error::NotFound { .. })),
            "missing object must be NotFound, got {r:?}"
        );
    }
    let r = s.get_range(&format!("{P}/missing"), 0..1).await;
    assert!(
        matches!(r, Err(Error::NotFound { .. })),
        "get_range of missing object: {r:?}"
    );
}

async fn create_only(s: &dyn Store) {
    let k = format!("{P}/once");
    s.put(&k, b"first".to_vec(), PutMode::CreateOnly)
        .await
        .unwrap();
    let r = s.put(&k, b"second".to_vec(), PutMode::CreateOnly).await;
    assert!(
        matches!(r, Err(Error::AlreadyExists { .. })),
        "create-only over existing: {r:?}"
    );
    assert_eq!(
        s.get(&k).await.unwrap(),
        b"first",
        "a refused create-only put changes nothing"
    );
}

async fn ranges(s: &dyn Store) {
    let k = format!("{P}/range");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    s.put(&k, data.clone(), PutMode::Overwrite).await.unwrap();
    assert_eq!(s.get_range(&k, 0..10).await.unwrap(), data[..10]);
    assert_eq!(s.get_range(&k, 4000..6000).await.unwrap(), data[4000..6000]);
    assert_eq!(
        s.get_range(&k, 9990..20_000).await.unwrap(),
        data[9990..],
        "range clamped at the end"
    );
    assert_eq!(
        s.get_range(&k, 20_000..30_000).await.unwrap(),
        b"",
        "range past the end is empty"
    );
}

async fn listing(s: &dyn Store) {
    for k in ["l/x/1", "l/x/2", "l/y/1", "l/z", "lz"] {
        s.put(
            &format!("{P}/{k}"),
            k.as_bytes().to_vec(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    }
    let keys = |v: Vec<super::ObjectMeta>| v.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.list(&format!("{P}/l/")).await.unwrap()),
        [
            format!("{P}/l/x/1"),
            format!("{P}/l/x/2"),
            format!("{P}/l/y/1"),
            format!("{P}/l/z")
        ],
        "list returns nested keys under the prefix, sorted"
    );
    assert_eq!(
        keys(s.list(&format!("{P}/l/x")).await.unwrap()),
        [format!("{P}/l/x/1"), format!("{P}/l/x/2")]
    );
    assert_eq!(
        keys(s.list(&format!("{P}/l")).await.unwrap()).len(),
        5,
        "prefix is a string prefix"
    );
    assert!(s.list(&format!("{P}/nothing/")).await.unwrap().is_empty());
    let sizes: Vec<u64> = s
        .list(&format!("{P}/l/x/"))
        .await
        .unwrap()
        .iter()
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, [5, 5], "list reports sizes");
}

async fn deletes(s: &dyn Store) {
    let k = format!("{P}/del");
    s.put(&k, b"x".to_vec(), PutMode::Overwrite).await.unwrap();
    s.delete(&k).await.unwrap();
    assert!(
        matches!(s.get(&k).await, Err(Error::NotFound { .. })),
        "deleted object is gone"
    );
    s.delete(&k)
        .await
        .expect("deleting a missing object succeeds");
    s.put(&k, b"again".to_vec(), PutMode::CreateOnly)
        .await
        .expect("a deleted key can be created again");
}

async fn invalid_keys(s: &dyn Store) {
    for k in [
        "", "/abs", "a/../b", "a//b", "..", "a/./b", "sp ace", "a/.tmp-1",
    ] {
        assert!(
            s.put(k, b"x".to_vec(), PutMode::Overwrite).await.is_err(),
            "key {k:?} must be refused"
        );
    }
}

async fn large_object(s: &dyn Store) {
    let k = format!("{P}/large");
    let data: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    s.put(&k, data.clone(), PutMode::CreateOnly).await.unwrap();
    assert!(s.get(&k).await.unwrap() == data, "9 MiB object round-trips");
    assert_eq!(s.head(&k).await.unwrap().size, data.len() as u64);
}

async fn cleanup(s: &dyn Store) {
    for m in s.list(&format!("{P}/")).await.unwrap() {
        s.delete(&m.key).await.unwrap();
    }
    assert!(
        s.list(&format!("{P}/")).await.unwrap().is_empty(),
        "everything deleted"
    );
}
