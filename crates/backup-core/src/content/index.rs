//! The pack index: which pack holds which chunk, read from the `index/` objects (with a host
//! cache), every copy of every chunk kept.
//!
//! Packs: small chunk objects written many to a store object, found through index objects.
//!
//! The object of a chunk whose plaintext is below [`PACK_BELOW`] bytes (a small file, a stream's
//! last chunk) is appended to the run's open pack, in stream order, instead of being an object
//! of its own; at [`PACK_TARGET`]
//! bytes, and at the end of the run, the pack is written (`packs/<xx>/<pack id>`, durable) and
//! then its index (`index/<pack id>`: chunk id, offset, length of each object in it). The
//! objects inside are byte for byte the chunk objects a loose chunk would be, so reading one is
//! a range read and the same `open_chunk`. Large chunks stay loose (`chunks/…`): they are
//! already few per gigabyte, and a range read of a pack would gain them nothing.
//!
//! Why the order: an index is trusted by later runs (a chunk it lists is reused), so it must
//! never name a pack that a crash could leave torn; the pack is durable before its index is
//! written. A pack without an index (a run killed in between) is an orphan that GC removes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::RwLock;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::codec::{Keys, ObjectType};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId};
use crate::store::{ObjectMeta, Store};

/// Chunks whose sealed object is smaller than this go into packs.
pub const PACK_BELOW: usize = 512 << 10;

/// Where a packed chunk object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedAt {
    pub pack: PackId,
    pub offset: u64,
    pub length: u32,
    /// The chunk's plaintext length, when the index records it (see [`PackedAt::plain_bound`]).
    pub plain: Option<u32>,
}

impl PackedAt {
    /// The byte range of the object in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.length)
    }

    /// At most how many bytes the chunk opens to: indexes written before `plain` was recorded
    /// hold only chunks whose plaintext was below [`PACK_BELOW`].
    pub fn plain_bound(&self) -> u64 {
        u64::from(self.plain.unwrap_or(PACK_BELOW as u32))
    }
}

/// The plaintext of an index object.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub(crate) version: u32,
    pub(crate) pack: PackId,
    pub(crate) chunks: Vec<IndexEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub(crate) id: ChunkId,
    pub(crate) offset: u64,
    pub(crate) length: u32,
    /// Plaintext length: a compressible chunk of up to 8 MiB may seal to a few kilobytes, and
    /// a restore bounds its memory by what a read opens to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plain: Option<u32>,
}

/// An index object that could not be read or opened: what its pack holds is unknown, so that
/// pack is never deleted on its account (see docs/FORMAT.md, "Garbage collection").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedIndex {
    pub key: String,
    /// The pack it describes, when the key names one.
    pub pack: Option<PackId>,
    pub reason: String,
}

/// Every index of the repository, as read at one moment.
///
/// A chunk may be in several packs (two hosts backed up the same new data at once, or a repack
/// was killed before its old pack was deleted): every location is kept, and every pack keeps
/// its whole chunk list. Keeping one location per chunk made a pack whose chunks were all
/// recorded elsewhere look empty, and GC deleted it while other packs relied on it.
#[derive(Debug, Default)]
pub struct PackIndex {
    map: RwLock<HashMap<ChunkId, Vec<PackedAt>>>,
    packs: RwLock<HashMap<PackId, Vec<(ChunkId, PackedAt)>>>,
    damaged: Vec<DamagedIndex>,
}

impl PackIndex {
    /// Reads every index object. Those that cannot be read or opened are listed in
    /// [`PackIndex::damaged`] (their chunks count as missing; `check` reports them).
    ///
    /// With `cache` (a directory on this host), an index already there is read from it, if it
    /// still opens, instead of from the store (index objects never change; a repository of a
    /// terabyte has ~100 000), new ones are added and those the store no longer lists removed.
    pub async fn read(store: &dyn Store, keys: &Keys, cache: Option<&Path>) -> Result<PackIndex> {
        let listed = store.list("index/").await?;
        let mut index = PackIndex::default();
        if let Some(dir) = cache {
            prune_cache(dir, &listed);
        }
        let mut reads = futures::stream::iter(listed)
            .map(|m| async move {
                let cached = cache.and_then(|d| {
                    let raw = std::fs::read(d.join(m.key.strip_prefix("index/")?)).ok()?;
                    open_index(keys, &m.key, &raw).ok()
                });
                if let Some(file) = cached {
                    return (m.key, Ok(Ok(file)));
                }
                let got = store.get(&m.key).await;
                let file = got.map(|raw| {
                    let file = open_index(keys, &m.key, &raw);
                    if let (Some(d), Ok(_)) = (cache, &file) {
                        write_cache(d, &m.key, &raw);
                    }
                    file
                });
                (m.key, file)
            })
            .buffer_unordered(16);
        while let Some((key, got)) = reads.next().await {
            match got {
                Ok(Ok(file)) => index.insert(&file),
                Ok(Err(reason)) => index.damaged.push(DamagedIndex {
                    pack: key.strip_prefix("index/").and_then(|p| p.parse().ok()),
                    key,
                    reason,
                }),
                // Deleted by a GC since the listing: its pack went with it.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        index.sort();
        Ok(index)
    }

    pub(crate) fn insert(&self, file: &IndexFile) {
        let mut map = self.map.write().unwrap();
        let mut packs = self.packs.write().unwrap();
        let list = packs.entry(file.pack).or_default();
        for e in &file.chunks {
            let at = PackedAt {
                pack: file.pack,
                offset: e.offset,
                length: e.length,
                plain: e.plain,
            };
            let places = map.entry(e.id).or_default();
            if !places.contains(&at) {
                places.push(at);
                list.push((e.id, at));
            }
        }
    }

    /// Locations in pack id order, so that every reader of the same indexes sees the same
    /// first location (the read order is whatever the store answered first).
    fn sort(&self) {
        for places in self.map.write().unwrap().values_mut() {
            places.sort_by_key(|a| (a.pack, a.offset));
        }
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(
        &self,
        pack: PackId,
        chunks: &[(ChunkId, u64, u32, Option<u32>)],
    ) {
        self.insert(&IndexFile {
            version: 1,
            pack,
            chunks: chunks
                .iter()
                .map(|&(id, offset, length, plain)| IndexEntry {
                    id,
                    offset,
                    length,
                    plain,
                })
                .collect(),
        });
        self.sort();
    }

    #[cfg(test)]
    pub(crate) fn damage_for_test(&mut self, pack: PackId) {
        self.damaged.push(DamagedIndex {
            key: pack.index_key(),
            pack: Some(pack),
            reason: "test".into(),
        });
    }

    /// Where `id` is packed, if it is (the first of its locations; see [`PackIndex::locations`]).
    pub fn get(&self, id: &ChunkId) -> Option<PackedAt> {
        self.map
            .read()
            .unwrap()
            .get(id)
            .and_then(|v| v.first())
            .copied()
    }

    /// Every pack location of `id`.
    pub fn locations(&self, id: &ChunkId) -> Vec<PackedAt> {
        self.map
            .read()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every indexed pack with every chunk its index lists (a chunk packed twice is listed
    /// under both packs).
    pub fn by_pack(&self) -> HashMap<PackId, Vec<(ChunkId, PackedAt)>> {
        self.packs.read().unwrap().clone()
    }

    /// Index objects that could not be read or opened.
    pub fn damaged(&self) -> &[DamagedIndex] {
        &self.damaged
    }

    /// Packs whose index is damaged: what they hold is unknown.
    pub fn damaged_packs(&self) -> HashSet<PackId> {
        self.damaged.iter().filter_map(|d| d.pack).collect()
    }
}

/// An optimisation: failing to write the cache must not fail anything.
pub(crate) fn write_cache(dir: &Path, key: &str, raw: &[u8]) {
    let Some(name) = key.strip_prefix("index/") else {
        return;
    };
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp{}", rand::random::<u32>()));
    let ok = std::fs::create_dir_all(dir).is_ok()
        && std::fs::write(&tmp, raw).is_ok()
        && std::fs::rename(&tmp, &path).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn prune_cache(dir: &Path, listed: &[ObjectMeta]) {
    let live: HashSet<&str> = listed
        .iter()
        .filter_map(|m| m.key.strip_prefix("index/"))
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if !live.contains(&*e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Opens an index object; the error says why it does not open.
pub(crate) fn open_index(
    keys: &Keys,
    key: &str,
    raw: &[u8],
) -> std::result::Result<IndexFile, String> {
    let pack: PackId = key
        .strip_prefix("index/")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| "its key does not name a pack".to_string())?;
    let plain = keys
        .open(ObjectType::PackIndex, &pack.0, raw, 64 << 20)
        .map_err(|e| e.to_string())?;
    let file: IndexFile = serde_json::from_slice(&plain).map_err(|e| format!("index JSON: {e}"))?;
    if file.pack != pack {
        return Err(format!("it describes pack {}", file.pack));
    }
    Ok(file)
}
