//! Snapshot manifests: one backup set (every item of one run) with sizes, hashes, chunks and facts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, SnapshotId};

/// Facts recorded at backup time (server versions, row counts, file counts…), checked by drills.
pub type Facts = BTreeMap<String, serde_json::Value>;

/// Kind of source an item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemKind {
    /// A directory as a tar stream.
    Volume,
    /// A command's standard output.
    Command,
    /// A PostgreSQL database dump.
    Postgres,
    /// A Redis RDB snapshot.
    Redis,
    /// Any other byte stream handed to the library.
    Stream,
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ItemKind::Volume => "volume",
            ItemKind::Command => "command",
            ItemKind::Postgres => "postgres",
            ItemKind::Redis => "redis",
            ItemKind::Stream => "stream",
        })
    }
}

/// One item of a snapshot: a whole byte stream, as an ordered list of chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub kind: ItemKind,
    /// Stream format: `tar`, `raw`, `pg_dump-custom`, `rdb`…
    pub format: String,
    /// Plaintext bytes.
    pub size: u64,
    /// SHA-256 of the plaintext stream, or of its chunks' SHA-256s (see `digest`), hex.
    pub sha256: String,
    /// What `sha256` is a digest of.
    #[serde(default, skip_serializing_if = "DigestKind::is_stream")]
    pub digest: DigestKind,
    /// Volatile stream header stored inline (base64), before the chunks; see FORMAT.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    pub chunks: Vec<ChunkId>,
    /// The file catalog of a volume item (written since the "file catalogs" format change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogRef>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    #[serde(default)]
    pub facts: Facts,
}

/// What an item's `sha256` covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestKind {
    /// The whole plaintext stream (head included): `sha256sum` of an export matches it.
    #[default]
    Stream,
    /// The concatenated SHA-256s of the chunks, in order (head included as if a chunk).
    /// Volumes written before `ChunkIds` use it.
    ChunkList,
    /// The concatenated chunk ids, in order (head's SHA-256 first, if any). Volumes use it: a
    /// file taken from the file cache is never read, so the stream as a whole is never hashed,
    /// and the keyed ids are computed anyway (a plain SHA-256 per chunk besides was a second
    /// pass over every byte). A restore recomputes each chunk's id, so every byte is covered.
    ChunkIds,
}

impl DigestKind {
    fn is_stream(&self) -> bool {
        *self == DigestKind::Stream
    }
}

/// One backup run. Written only after every chunk it names is durably stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Manifest format version.
    pub version: u32,
    pub id: SnapshotId,
    /// When the run started (the point in time the snapshot represents, roughly).
    pub time: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub host: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Lifeboat version that wrote it.
    pub program: String,
    pub items: Vec<Item>,
    /// Sources that failed in a run that committed the others (`run --partial`): the
    /// snapshot is incomplete, `latest` passes it over unless items are named, and it takes
    /// no retention slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<FailedSource>,
}

/// A source a partial run could not back up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSource {
    pub source: String,
    pub error: String,
}

impl Snapshot {
    /// Some source of its run failed (its other items are complete and verified).
    pub fn is_incomplete(&self) -> bool {
        !self.incomplete.is_empty()
    }
}

/// Where an item's file catalog ([`crate::catalog::Catalog`]) is stored: its encoding, cut in
/// slices, each a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogRef {
    pub chunks: Vec<ChunkId>,
    /// Bytes of the encoding.
    pub size: u64,
    /// SHA-256 of the encoding, hex.
    pub sha256: String,
}

impl Item {
    /// Every chunk the item names: its stream's, then its catalog's. What garbage collection
    /// keeps, `check` reads and Object Lock must cover.
    pub fn all_chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.chunks
            .iter()
            .chain(self.catalog.iter().flat_map(|c| c.chunks.iter()))
    }

    /// The inline head bytes (empty when there are none).
    pub fn head_bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine;
        match &self.head {
            None => Ok(Vec::new()),
            Some(h) => base64::engine::general_purpose::STANDARD
                .decode(h)
                .map_err(|e| format!("inline head of item {}: {e}", self.name)),
        }
    }
}

impl Snapshot {
    /// Total plaintext bytes of all items.
    pub fn size(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }

    /// Sorted item names: the snapshot's source set.
    pub fn source_set(&self) -> Vec<String> {
        let mut v: Vec<_> = self.items.iter().map(|i| i.name.clone()).collect();
        v.sort();
        v
    }

    /// The item called `name`.
    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.name == name)
    }

    /// The item `name`, or the error that names the items the snapshot does have.
    pub fn require(&self, name: &str) -> crate::error::Result<&Item> {
        self.item(name)
            .ok_or_else(|| crate::error::Error::ItemNotFound {
                snapshot: self.id,
                item: name.to_string(),
                available: self.source_set().join(", "),
            })
    }
}

/// Item names become file names on restore: keep them boring.
pub fn validate_item_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
