//! Property-based fuzzing of every decoder that reads bytes from outside: the envelope, pack
//! indexes, snapshot manifests, key slots, the config, the RDB stream check and the untar of
//! a volume. Seeds come from `tests/corpus/<decoder>/` (real objects); each case applies a few
//! random mutations (bit flips, byte sets, inserts, deletes, truncation, duplicated ranges).
//! Properties: no panic, no unbounded allocation or hang (bounded inputs, bounded KDF costs),
//! every rejection an error value, and an unmutated seed accepted.
//!
//! CI runs 256 cases per decoder; a longer run: `PROPTEST_CASES=20000 cargo test --release -p
//! backup-core --test fuzz` (README, "Development").

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use backup_core::codec::keys::KeySlot;
use backup_core::codec::{Keys, ObjectType};
use backup_core::content::PackIndex;
use backup_core::engines::redis::rdb::RdbCheck;
use backup_core::id::{PackId, SnapshotId};
use backup_core::repository::{CacheOptions, Repository};
use backup_core::store::{LocalStore, PutMode, Store};
use common::passphrase;
use proptest::prelude::*;

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Runtime::new().unwrap());

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failing cases are reported with their seed; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn corpus(dir: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", root.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", root.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Mutation::Insert(p, v)),
        (any::<usize>(), 1..64usize).prop_map(|(p, n)| Mutation::Delete(p, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1..256usize).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
    ]
}

fn mutate(mut data: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = data.len().max(1);
        match m {
            Mutation::Flip(p, b) if !data.is_empty() => data[p % len] ^= 1 << b,
            Mutation::Set(p, b) if !data.is_empty() => data[p % len] = *b,
            Mutation::Insert(p, v) => {
                let at = p % (data.len() + 1);
                data.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(p, n) if !data.is_empty() => {
                let at = p % len;
                let end = (at + n).min(data.len());
                data.drain(at..end);
            }
            Mutation::Truncate(p) => data.truncate(p % (data.len() + 1)),
            Mutation::Duplicate(p, n) if !data.is_empty() => {
                let at = p % len;
                let end = (at + n).min(data.len());
                let copy = data[at..end].to_vec();
                data.splice(end..end, copy);
            }
            _ => {}
        }
    }
    data
}

fn muts() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..6)
}

const MASTER: [u8; 64] = [7; 64];

fn keys() -> Keys {
    Keys::from_master(&MASTER)
}

proptest! {
    #![proptest_config(config())]

    /// A sealed object with any damage is refused with an error; the intact one opens.
    #[test]
    fn envelope(plain in prop::collection::vec(any::<u8>(), 0..4096), m in muts(), level in 1..4i32) {
        let k = keys();
        let name = [3u8; 32];
        let sealed = k.seal(ObjectType::Chunk, &name, &plain, level);
        let bad = mutate(sealed.clone(), &m);
        match k.open(ObjectType::Chunk, &name, &bad, 1 << 20) {
            Ok(p) => prop_assert!(bad == sealed && p == plain),
            Err(_) => prop_assert!(bad != sealed),
        }
        // A bound below the plaintext is refused, not exceeded.
        if plain.len() > 16 {
            prop_assert!(k.open(ObjectType::Chunk, &name, &sealed, plain.len() - 1).is_err());
        }
    }

    /// Damaged index plaintexts (sealed with the right key) and damaged index objects: the read
    /// succeeds, the index is listed as damaged or parsed, and nothing panics.
    #[test]
    fn pack_index(seed in 0..corpus("index").len(), m in muts(), raw_damage in any::<bool>()) {
        let plain = corpus("index")[seed].clone();
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let k = keys();
        let pack: PackId = "0a0b0c0d0e0f10111213141516171819".parse().unwrap();
        let object = if raw_damage {
            mutate(k.seal(ObjectType::PackIndex, &pack.0, &plain, 3), &m)
        } else {
            k.seal(ObjectType::PackIndex, &pack.0, &mutate(plain, &m), 3)
        };
        RT.block_on(async {
            store.put(&pack.index_key(), object, PutMode::CreateOnly).await.unwrap();
            let index = PackIndex::read(&store, &k, None).await.unwrap();
            let parsed = index.by_pack().len();
            prop_assert_eq!(parsed + index.damaged().len(), 1);
            Ok(())
        })?;
    }

    /// Damaged manifests: a load is an error naming the snapshot, or a parsed snapshot; a
    /// listing goes on and lists it as damaged.
    #[test]
    fn manifest(seed in 0..corpus("manifest").len(), m in muts()) {
        let json = mutate(corpus("manifest")[seed].clone(), &m);
        let (dir, repo) = RT.block_on(repo_with_slot());
        let id: SnapshotId = "58468793f38901a6c27ecd90fbe82755".parse().unwrap();
        let object = repo.keys().seal(ObjectType::Snapshot, &id.0, &json, 3);
        std::fs::create_dir_all(dir.path().join("repo/snapshots")).unwrap();
        std::fs::write(dir.path().join("repo").join(id.object_key()), object).unwrap();
        RT.block_on(async {
            let loaded = repo.load_snapshot_from_store(&id).await;
            let listing = repo.snapshot_listing().await.unwrap();
            match loaded {
                Ok(s) => prop_assert!(s.id == id && listing.snapshots.len() == 1),
                Err(e) => {
                    prop_assert!(e.to_string().contains(&id.to_string()), "{}", e);
                    prop_assert_eq!(listing.damaged.len(), 1);
                }
            }
            Ok(())
        })?;
    }

    /// Damaged key slots parse or are refused; one that parses reports damage or unlocks (or
    /// not) within bounded cost; the intact seed unlocks with its passphrase.
    #[test]
    fn key_slot(seed in 0..corpus("keyslot").len(), m in muts()) {
        let raw = corpus("keyslot")[seed].clone();
        let intact = raw.clone();
        let bad = mutate(raw, &m);
        let Ok(slot) = serde_json::from_slice::<KeySlot>(&bad) else {
            return Ok(());
        };
        let damaged = slot.damage().is_some();
        if bad == intact {
            prop_assert!(!damaged);
            prop_assert!(slot.unlock(&passphrase("pw")).unwrap().is_some());
        } else if !damaged {
            // A mutation in whitespace, or a slot without a digest: opening stays bounded.
            let _ = slot.unlock(&passphrase("pw"));
        }
    }

    /// A damaged config fails `open` with an error; nothing panics.
    #[test]
    fn repo_config(seed in 0..corpus("config").len(), m in muts()) {
        let raw = corpus("config")[seed].clone();
        let intact = raw.clone();
        let bad = mutate(raw, &m);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        let slot = corpus("keyslot")[0].clone();
        let slot_id = serde_json::from_slice::<KeySlot>(&slot).unwrap().id;
        std::fs::write(root.join(slot_id.object_key()), slot).unwrap();
        std::fs::write(root.join("config"), &bad).unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root));
        let opened = RT.block_on(Repository::open(store, &passphrase("pw"), no_cache()));
        if bad == intact {
            prop_assert!(opened.is_ok(), "{:?}", opened.err());
        }
    }

    /// The RDB check fed in random pieces: a damaged stream is an error, the intact one passes.
    #[test]
    fn rdb(seed in 0..corpus("rdb").len(), m in muts(), cuts in prop::collection::vec(1..64usize, 0..8)) {
        let intact = corpus("rdb")[seed].clone();
        let bad = mutate(intact.clone(), &m);
        let mut check = RdbCheck::default();
        let mut rest = &bad[..];
        let mut result = Ok(());
        for c in cuts {
            let (piece, tail) = rest.split_at(c.min(rest.len()));
            result = result.and(check.update(piece));
            rest = tail;
        }
        result = result.and(check.update(rest));
        let summary = result.and_then(|()| check.finish());
        if bad == intact {
            prop_assert!(summary.is_ok(), "{:?}", summary);
        } else if let Ok(s) = summary {
            // A changed stream passes only as one without a checksum (its last 8 bytes zero):
            // the CRC-64 catches every other change.
            prop_assert!(!s.checksum_verified, "a damaged RDB passed its checksum: {:?}", s);
        }
    }

    /// Damaged archives: the untar refuses or extracts, and nothing lands outside the target.
    #[test]
    fn untar(seed in 0..corpus("tar").len(), m in muts()) {
        let bad = mutate(corpus("tar")[seed].clone(), &m);
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out");
        std::fs::create_dir(&dst).unwrap();
        let _ = backup_core::engines::volume::untar::untar(std::io::Cursor::new(bad), &dst, "fuzz", false);
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        prop_assert_eq!(outside, vec![std::ffi::OsString::from("out")]);
    }
}

fn no_cache() -> CacheOptions {
    CacheOptions {
        dir: None,
        disabled: true,
    }
}

async fn repo_with_slot() -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
    let repo = common::init_uncached(store).await;
    (dir, repo)
}
