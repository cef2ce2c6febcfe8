//! The packer: a run's small sealed chunks appended, in stream order, to packs of
//! [`PACK_TARGET`] bytes; each pack written durably before its index.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::index::{IndexEntry, IndexFile, PACK_BELOW, PackIndex, write_cache};
use crate::codec::{Keys, ObjectType};
use crate::error::Result;
use crate::id::{ChunkId, PackId};
use crate::store::{PutMode, Store};

/// A pack is written once it holds this many bytes.
pub const PACK_TARGET: usize = 8 << 20;

/// A pack being filled.
struct OpenPack {
    id: PackId,
    data: Vec<u8>,
    chunks: Vec<IndexEntry>,
}

impl OpenPack {
    fn new() -> Self {
        OpenPack {
            id: PackId::random(),
            data: Vec::new(),
            chunks: Vec::new(),
        }
    }
}

/// A pack ready to be written.
pub struct FullPack(OpenPack);

/// The packs of one backup run, and the index it dedups against.
pub struct Packer {
    index: Arc<PackIndex>,
    /// This host's copies of index objects (see [`PackIndex::read`]).
    cache: Option<PathBuf>,
    open: Mutex<OpenPack>,
    /// Chunks packed by this run, written or not: a second copy in flight is not packed again.
    seen: Mutex<HashSet<ChunkId>>,
}

impl Packer {
    /// A packer for a run that read `index` after the GC protocol let it start (an index read
    /// earlier may name packs a GC has deleted since). Indexes it writes are also copied into
    /// `cache`, so the next run need not fetch what this one wrote.
    pub fn new(index: Arc<PackIndex>, cache: Option<PathBuf>) -> Self {
        Packer {
            index,
            cache,
            open: Mutex::new(OpenPack::new()),
            seen: Mutex::default(),
        }
    }

    /// The run's index; packs this run writes are added to it.
    pub fn index(&self) -> &Arc<PackIndex> {
        &self.index
    }

    /// Appends a sealed chunk object (of `plain` bytes plaintext); `None` if this run packed it
    /// already. Returns the pack to write once it is full.
    pub fn add(&self, id: ChunkId, object: &[u8], plain: u32) -> Option<Option<FullPack>> {
        if !self.seen.lock().unwrap().insert(id) {
            return None;
        }
        let mut open = self.open.lock().unwrap();
        if open.data.capacity() == 0 {
            open.data.reserve(PACK_TARGET + PACK_BELOW);
        }
        let offset = open.data.len() as u64;
        open.data.extend_from_slice(object);
        open.chunks.push(IndexEntry {
            id,
            offset,
            length: object.len() as u32,
            plain: Some(plain),
        });
        if open.data.len() < PACK_TARGET {
            return Some(None);
        }
        Some(Some(FullPack(std::mem::replace(
            &mut *open,
            OpenPack::new(),
        ))))
    }

    /// The last, partly filled pack (at the end of a run).
    pub fn take(&self) -> Option<FullPack> {
        let mut open = self.open.lock().unwrap();
        (!open.chunks.is_empty()).then(|| FullPack(std::mem::replace(&mut *open, OpenPack::new())))
    }
}

impl Packer {
    /// Writes a full pack, durably, then its index, and records its chunks in the run's index.
    pub async fn write(&self, pack: FullPack, store: &dyn Store, keys: &Keys) -> Result<()> {
        let OpenPack { id, data, chunks } = pack.0;
        store
            .put(&id.object_key(), data, PutMode::CreateOnly)
            .await?;
        let file = IndexFile {
            version: 1,
            pack: id,
            chunks,
        };
        let json = serde_json::to_vec(&file).expect("index serialises");
        let raw = keys.seal(ObjectType::PackIndex, &id.0, &json, 3);
        store
            .put(&id.index_key(), raw.clone(), PutMode::CreateOnly)
            .await?;
        if let Some(d) = &self.cache {
            write_cache(d, &id.index_key(), &raw);
        }
        self.index.insert(&file);
        Ok(())
    }
}
