//! The volume file cache: which chunks each large file became, so an unchanged file is not read again.
//!
//! Like borg's files cache it lives on the backup host (`<cache>/files/<item>`), sealed with
//! the repository key, and is only an optimisation: missing, damaged or stale, the files are
//! read as usual. A file is reused only when path, size, mtime, ctime and inode all match and
//! every chunk it names is still in a snapshot of the repository.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::codec::{Keys, ObjectType};
use crate::id::ChunkId;

/// 2: chunks no longer carry a plain SHA-256 (items are digested over chunk ids).
const VERSION: u32 = 2;
/// Cache files above this are not ours to open (a chunk list per large file is small).
const MAX_LEN: usize = 256 << 20;

/// What must be unchanged for a file's data to be taken from the cache. ctime catches chmod,
/// chown and writes that reset mtime; the inode catches a file replaced by another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileKey {
    /// Path inside the volume.
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

/// One chunk of a cached file: enough to name it in a manifest (and so in the item digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedChunk {
    pub id: ChunkId,
    pub len: u64,
}

/// A file's data as chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFile {
    pub key: FileKey,
    pub chunks: Vec<CachedChunk>,
}

/// Every cached file of one volume item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCache {
    version: u32,
    /// By path. A volume moved elsewhere keeps its inodes, so entries stay valid; another
    /// tree at the same path has other inodes and ctimes, so they do not match.
    files: HashMap<String, CachedFile>,
}

impl Default for FileCache {
    fn default() -> Self {
        Self::new()
    }
}

impl FileCache {
    pub fn new() -> Self {
        FileCache {
            version: VERSION,
            files: HashMap::new(),
        }
    }

    pub fn insert(&mut self, file: CachedFile) {
        self.files.insert(file.key.path.clone(), file);
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The chunks of the file at `key.path`, if it was cached with exactly this key.
    pub fn lookup(&self, key: &FileKey) -> Option<&[CachedChunk]> {
        self.files
            .get(&key.path)
            .filter(|f| &f.key == key)
            .map(|f| &f.chunks[..])
    }
}

/// Where one volume item's cache lives and the key that seals it. The walker loads it on its
/// own thread (only volumes pay for it); the backup saves it after the snapshot.
#[derive(Debug, Clone)]
pub struct CacheSlot {
    path: PathBuf,
    keys: Keys,
    item: String,
}

impl CacheSlot {
    pub fn new(path: PathBuf, keys: Keys, item: &str) -> Self {
        CacheSlot {
            path,
            keys,
            item: item.to_string(),
        }
    }

    /// The cache file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The volume item it belongs to.
    pub fn item(&self) -> &str {
        &self.item
    }

    /// The cache; `None` when there is none or it cannot be used.
    pub fn load(&self) -> Option<FileCache> {
        let sealed = std::fs::read(&self.path).ok()?;
        let plain = self
            .keys
            .open(ObjectType::FileCache, &name(&self.item), &sealed, MAX_LEN)
            .ok()?;
        serde_json::from_slice::<FileCache>(&plain)
            .ok()
            .filter(|c| c.version == VERSION)
    }

    /// Writes `cache` atomically, readable by the owner only (it names the volume's files).
    pub fn save(&self, cache: &FileCache) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let plain = serde_json::to_vec(cache).map_err(std::io::Error::other)?;
        let sealed = self
            .keys
            .seal(ObjectType::FileCache, &name(&self.item), &plain, 3);
        let dir = self.path.parent().expect("cache file has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = self
            .path
            .with_extension(format!("tmp{}", rand::random::<u32>()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&sealed))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

fn name(item: &str) -> Vec<u8> {
    format!("files/{item}").into_bytes()
}
