//! The repository: config, key slots, snapshot manifests (with a local cache) on top of a `Store`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::codec::keys::{KdfParams, KeySlot};
use crate::codec::{Keys, ObjectType};
use crate::content::PackIndex;
use crate::error::{Error, Result};
use crate::id::{ChunkId, SlotId, SnapshotId, id_in_key};
use crate::manifest::Snapshot;
use crate::secret::Secret;
use crate::store::{PutMode, Store};

/// Repository format version written by this library.
pub const FORMAT_VERSION: u32 = 1;
/// Snapshot manifests larger than this are refused as corrupt (bounds memory on open).
const MAX_MANIFEST: usize = 1 << 30;

/// Content-defined chunking parameters; they change chunk boundaries, so they live in `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// restic-like: 512 KiB / 1 MiB / 8 MiB.
    fn default() -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Sizes for the stretches of a volume between large files (small files and tar headers):
    /// a quarter of these (128 KiB / 256 KiB / 2 MiB by default), within the limits `validate`
    /// sets. Measured on a 1.6 GB tree after a ~2 % change (docs/BENCHMARKS.md): an eighth
    /// stores 54 MB instead of 68 but takes 20 % longer for a first backup (twice the objects).
    pub fn between_files(&self) -> ChunkerParams {
        ChunkerParams {
            min_size: (self.min_size / 4).max(64) & !1,
            avg_size: (self.avg_size / 4).max(256) & !1,
            max_size: (self.max_size / 4).max(256) & !1,
        }
    }

    /// Bytes after which a volume's next small file starts a chunk of its own ([`PieceContext`]
    /// `group_min`): a 512th of the minimum size, 1 KiB by default, so nearly every file is a
    /// chunk of its own (small chunks are packed, see [`crate::content::packer`]) and only runs of tiny
    /// files share one. Measured on a 1.6 GB tree after a ~2 % change (docs/BENCHMARKS.md):
    /// without groups 68 MB stored, 16 KiB 32.6 MB, 4 KiB 30.3 MB, 1 KiB 30.0 MB (restic
    /// 28.5–30.6); first backup 5.42, 5.56 and 5.64 s with packs.
    ///
    /// [`PieceContext`]: crate::source::PieceContext
    pub fn file_group(&self) -> u64 {
        u64::from(self.min_size / 512)
    }

    fn validate(&self) -> Result<()> {
        let even = self.min_size.is_multiple_of(2)
            && self.avg_size.is_multiple_of(2)
            && self.max_size.is_multiple_of(2);
        let ordered = self.min_size <= self.avg_size && self.avg_size <= self.max_size;
        let bounds = self.min_size >= 64
            && self.avg_size >= 256
            && self.avg_size <= 4 << 20
            && self.max_size <= 16 << 20;
        if even && ordered && bounds {
            Ok(())
        } else {
            Err(Error::Usage(format!("invalid chunker parameters {self:?}")))
        }
    }
}

/// The `config` object: plaintext JSON, authenticated by a MAC under the id key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: String,
    pub chunker_params: ChunkerParams,
    pub compression: String,
    pub encryption: String,
    pub chunk_id: String,
    /// HMAC-SHA256(id key, "lifeboat config v1" || JSON of the other fields), hex.
    #[serde(default)]
    pub mac: String,
}

impl RepoConfig {
    fn mac_input(&self) -> Vec<u8> {
        let mut c = self.clone();
        c.mac.clear();
        serde_json::to_vec(&c).expect("config serialises")
    }
}

/// The snapshots of a repository, readable or not.
#[derive(Debug, Clone, Default)]
pub struct SnapshotListing {
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    pub damaged: Vec<DamagedSnapshot>,
}

impl SnapshotListing {
    /// Only the snapshots `filter` matches (damaged ones stay: they can match nothing, and
    /// the operator must still see them).
    pub fn filtered(mut self, filter: &SnapshotFilter) -> SnapshotListing {
        self.snapshots.retain(|s| filter.matches(s));
        self
    }

    /// The listing as both binaries print it with `--json`: one row per snapshot, oldest
    /// first, then the damaged ones (`{id, damaged, stored}`).
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        let mut rows: Vec<serde_json::Value> = self
            .snapshots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id, "time": s.time, "finished": s.finished, "host": s.host,
                    "tags": s.tags, "size": s.size(), "age_seconds": (now - s.time).num_seconds(),
                    "items": s.items.iter().map(|i| serde_json::json!({
                        "name": i.name, "kind": i.kind, "format": i.format, "size": i.size,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        rows.extend(
            self.damaged
                .iter()
                .map(|d| serde_json::json!({"id": d.id, "damaged": d.reason, "stored": d.stored})),
        );
        serde_json::Value::Array(rows)
    }
}

/// A snapshot manifest that is listed but does not open.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSnapshot {
    pub id: SnapshotId,
    /// When the store says the object was written.
    pub stored: Option<DateTime<Utc>>,
    pub reason: String,
}

impl std::fmt::Display for DamagedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stored = self
            .stored
            .map(|t| format!(", stored {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
            .unwrap_or_default();
        write!(
            f,
            "snapshot {}{stored} cannot be opened: {} (`lifeboat-backup forget {}` removes it)",
            self.id,
            self.reason,
            self.id.short()
        )
    }
}

/// What [`Repository::forget`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ForgetReport {
    pub forgotten: Vec<SnapshotId>,
    /// Still under Object Lock retention: kept, to be forgotten once it expires.
    pub retained: Vec<SnapshotId>,
}

/// Options for [`Repository::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: ChunkerParams,
    pub label: Option<String>,
    pub cache: CacheOptions,
}

/// Where snapshot manifests are cached locally.
#[derive(Debug, Clone, Default)]
pub struct CacheOptions {
    /// Cache root; `None` = `$LIFEBOAT_CACHE_DIR`, `$XDG_CACHE_HOME/lifeboat` or `~/.cache/lifeboat`.
    pub dir: Option<PathBuf>,
    /// Do not cache (always read manifests from the store).
    pub disabled: bool,
}

impl CacheOptions {
    /// The cache root in effect, if caching is on.
    pub fn root(&self) -> Option<PathBuf> {
        if self.disabled {
            return None;
        }
        self.home()
    }

    /// Where this user's Lifeboat state lives (the run locks), with the cache on or off: a run
    /// with `--no-cache` must still exclude one without.
    pub fn home(&self) -> Option<PathBuf> {
        if let Some(d) = &self.dir {
            return Some(d.clone());
        }
        if let Some(d) = std::env::var_os("LIFEBOAT_CACHE_DIR") {
            return Some(d.into());
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("lifeboat"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/lifeboat"))
    }
}

/// Which snapshots `latest` may name: restic's `--host` and `--tag`, plus the items the command
/// needs. The default host is this machine's; `host: None` means any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub host: Option<String>,
    /// Every one of these tags (none: any).
    pub tags: Vec<String>,
    /// Every one of these, each an item name or a source name (`pg` holds `pg.app`).
    pub items: Vec<String>,
}

impl SnapshotFilter {
    /// This host's snapshots, holding `items`.
    pub fn this_host(items: Vec<String>) -> SnapshotFilter {
        SnapshotFilter {
            host: Some(crate::hostname()),
            tags: Vec::new(),
            items,
        }
    }

    /// Host and tags match (items aside).
    pub fn selects(&self, s: &Snapshot) -> bool {
        self.host.as_ref().is_none_or(|h| &s.host == h)
            && self.tags.iter().all(|t| s.tags.contains(t))
    }

    /// Every wanted item (or an item of every wanted source) is in `s`.
    pub fn holds_items(&self, s: &Snapshot) -> bool {
        self.items.iter().all(|want| {
            s.items.iter().any(|i| {
                i.name == *want
                    || i.name
                        .strip_prefix(want.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })
        })
    }

    /// `selects` and `holds_items`.
    pub fn matches(&self, s: &Snapshot) -> bool {
        self.selects(s) && self.holds_items(s)
    }

    /// "of host db1, tagged nightly, holding pg.app" (for messages).
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.host {
            Some(h) => format!("of host {h}"),
            None => "of any host".to_string(),
        }];
        if !self.tags.is_empty() {
            parts.push(format!("tagged {}", self.tags.join(" and ")));
        }
        if !self.items.is_empty() {
            parts.push(format!("holding {}", self.items.join(", ")));
        }
        parts.join(", ")
    }

    /// The hosts and tags the repository has snapshots of, for a refusal to name.
    fn present(snaps: &[Snapshot]) -> String {
        if snaps.is_empty() {
            return "the repository has no snapshots".into();
        }
        let hosts: std::collections::BTreeSet<&str> =
            snaps.iter().map(|s| s.host.as_str()).collect();
        let tags: std::collections::BTreeSet<&str> = snaps
            .iter()
            .flat_map(|s| s.tags.iter().map(String::as_str))
            .collect();
        let mut out = format!(
            "it has snapshots of host {}",
            hosts.into_iter().collect::<Vec<_>>().join(", ")
        );
        if !tags.is_empty() {
            out.push_str(&format!(
                " with tags {}",
                tags.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        out
    }
}

/// An opened repository: store, unwrapped keys and config.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    keys: Keys,
    config: RepoConfig,
    slot: SlotId,
    cache: Option<PathBuf>,
    /// The pack index as last read (shared by clones).
    packs: Arc<std::sync::RwLock<Option<Arc<PackIndex>>>>,
}

#[async_trait::async_trait]
impl crate::content::Contents for Repository {
    fn store(&self) -> &Arc<dyn Store> {
        Repository::store(self)
    }
    fn keys(&self) -> &Keys {
        Repository::keys(self)
    }
    fn max_chunk(&self) -> usize {
        self.config.chunker_params.max_size as usize
    }
    fn location(&self) -> String {
        Repository::location(self)
    }
    async fn packs(&self) -> Result<Arc<PackIndex>> {
        Repository::packs(self).await
    }
    async fn reload_packs(&self) -> Result<Arc<PackIndex>> {
        Repository::reload_packs(self).await
    }
}

impl Repository {
    /// Creates a new repository in an empty store, with one key slot for `secret`.
    pub async fn init(
        store: Arc<dyn Store>,
        secret: &Secret,
        opts: InitOptions,
    ) -> Result<Repository> {
        opts.chunker.validate()?;
        store.verify().await?;
        match store.head("config").await {
            Ok(_) => {
                return Err(Error::RepositoryExists {
                    location: store.location(),
                });
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let master: Zeroizing<[u8; 64]> = Zeroizing::new(random_64());
        let keys = Keys::from_master(&master);
        let slot = KeySlot::create(&master, secret, opts.kdf, opts.label.clone())?;
        store
            .put(&slot.id.object_key(), to_json(&slot), PutMode::CreateOnly)
            .await?;
        let mut config = RepoConfig {
            format: "lifeboat".into(),
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: Utc::now(),
            chunker: "fastcdc-2020".into(),
            chunker_params: opts.chunker,
            compression: "zstd".into(),
            encryption: "aes-256-gcm".into(),
            chunk_id: "hmac-sha256".into(),
            mac: String::new(),
        };
        config.mac = hex::encode(keys.mac(b"lifeboat config v1", &config.mac_input()));
        // config is written last: a store without it is not a repository yet.
        store
            .put("config", to_json(&config), PutMode::CreateOnly)
            .await?;
        let cache = cache_dir(&opts.cache, &config.id);
        Ok(Repository {
            store,
            keys,
            config,
            slot: slot.id,
            cache,
            packs: Arc::default(),
        })
    }

    /// Opens an existing repository with `secret`.
    pub async fn open(
        store: Arc<dyn Store>,
        secret: &Secret,
        cache: CacheOptions,
    ) -> Result<Repository> {
        let raw = match store.get("config").await {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => {
                // A missing bucket is not a missing repository: say which it is.
                store.verify().await?;
                return Err(Error::RepositoryNotFound {
                    location: store.location(),
                });
            }
            Err(e) => return Err(e),
        };
        let config: RepoConfig = serde_json::from_slice(&raw).map_err(|e| Error::Format {
            object: format!("config of {}", store.location()),
            detail: e.to_string(),
        })?;
        if config.format != "lifeboat" || config.version != FORMAT_VERSION {
            return Err(Error::Format {
                object: format!("config of {}", store.location()),
                detail: format!(
                    "format {} version {} is not supported by this Lifeboat (version {FORMAT_VERSION})",
                    config.format, config.version
                ),
            });
        }
        let (master, slot) = unlock(&*store, secret).await?;
        let keys = Keys::from_master(&master);
        let expected = hex::encode(keys.mac(b"lifeboat config v1", &config.mac_input()));
        if expected != config.mac {
            return Err(Error::Format {
                object: format!("config of {}", store.location()),
                detail: "MAC does not verify: the config was altered".into(),
            });
        }
        let cache = cache_dir(&cache, &config.id);
        Ok(Repository {
            store,
            keys,
            config,
            slot,
            cache,
            packs: Arc::default(),
        })
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The unwrapped keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The pack index, read on first use.
    pub async fn packs(&self) -> Result<Arc<PackIndex>> {
        if let Some(p) = self.packs.read().unwrap().clone() {
            return Ok(p);
        }
        self.reload_packs().await
    }

    /// Reads the pack index again (other processes may have written or deleted packs); index
    /// objects already in the local cache are read from it.
    pub async fn reload_packs(&self) -> Result<Arc<PackIndex>> {
        let cache = self.index_cache();
        let fresh = Arc::new(PackIndex::read(&*self.store, &self.keys, cache.as_deref()).await?);
        *self.packs.write().unwrap() = Some(fresh.clone());
        Ok(fresh)
    }

    /// Reads the pack index from the store alone (not this host's cache) and makes it the
    /// repository's view (for `check`: a damaged index in the store must show).
    pub async fn reload_packs_from_store(&self) -> Result<Arc<PackIndex>> {
        let fresh = Arc::new(PackIndex::read(&*self.store, &self.keys, None).await?);
        *self.packs.write().unwrap() = Some(fresh.clone());
        Ok(fresh)
    }

    /// Where this host keeps copies of index objects (none without a cache).
    pub(crate) fn index_cache(&self) -> Option<std::path::PathBuf> {
        self.cache.as_ref().map(|c| c.join("index"))
    }

    /// The repository config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The key slot this repository was opened with.
    pub fn slot(&self) -> SlotId {
        self.slot
    }

    /// Store location, for messages.
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Ids of all snapshots in the store.
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>> {
        let mut ids = Vec::new();
        for m in self.store.list("snapshots/").await? {
            let name = m.key.trim_start_matches("snapshots/");
            if let Ok(id) = name.parse() {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Every readable snapshot, oldest first. Manifests come from the local cache when present.
    /// A manifest that does not open is left out (see [`Repository::snapshot_listing`]): one
    /// damaged object must not stop listings, restores of other snapshots and new backups.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(self.snapshot_listing().await?.snapshots)
    }

    /// Every snapshot, oldest first, and those whose manifest cannot be opened.
    pub async fn snapshot_listing(&self) -> Result<SnapshotListing> {
        let metas = self.store.list("snapshots/").await?;
        let ids: Vec<SnapshotId> = metas.iter().filter_map(|m| id_in_key(&m.key)).collect();
        self.prune_cache(&ids);
        let mut out = SnapshotListing::default();
        for m in metas {
            let Some(id) = id_in_key::<SnapshotId>(&m.key) else {
                continue;
            };
            match self.load_snapshot(&id).await {
                Ok(s) => out.snapshots.push(s),
                Err(Error::SnapshotCorrupt { reason, .. }) => out.damaged.push(DamagedSnapshot {
                    id,
                    stored: m.modified,
                    reason,
                }),
                // Forgotten since the listing.
                Err(Error::SnapshotNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.snapshots
            .sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Reads and decrypts one snapshot manifest.
    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let cached = self.cache_path(id).and_then(|p| std::fs::read(p).ok());
        let from_cache = cached.is_some();
        let raw = match cached {
            Some(raw) => raw,
            None => match self.store.get(&id.object_key()).await {
                Ok(raw) => raw,
                Err(Error::NotFound { .. }) => {
                    return Err(Error::SnapshotNotFound {
                        query: id.to_string(),
                        location: self.location(),
                    });
                }
                Err(e) => return Err(e),
            },
        };
        match self.decode_snapshot(id, &raw) {
            Ok(s) => {
                if !from_cache {
                    self.write_cache(id, &raw);
                }
                Ok(s)
            }
            // A damaged cache entry must not hide a good object in the store.
            Err(_) if from_cache => {
                if let Some(p) = self.cache_path(id) {
                    let _ = std::fs::remove_file(p);
                }
                let raw = self.store.get(&id.object_key()).await?;
                self.decode_snapshot(id, &raw)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a snapshot manifest from the store itself, bypassing the cache (for `check`).
    pub async fn load_snapshot_from_store(&self, id: &SnapshotId) -> Result<Snapshot> {
        let raw = self.store.get(&id.object_key()).await?;
        self.decode_snapshot(id, &raw)
    }

    fn decode_snapshot(&self, id: &SnapshotId, raw: &[u8]) -> Result<Snapshot> {
        let plain = self
            .keys
            .open(ObjectType::Snapshot, &id.0, raw, MAX_MANIFEST)
            .map_err(|e| Error::SnapshotCorrupt {
                snapshot: *id,
                reason: e.to_string(),
            })?;
        let snap: Snapshot =
            serde_json::from_slice(&plain).map_err(|e| Error::SnapshotCorrupt {
                snapshot: *id,
                reason: format!("manifest JSON: {e}"),
            })?;
        if snap.id != *id {
            return Err(Error::SnapshotCorrupt {
                snapshot: *id,
                reason: format!("manifest claims id {}", snap.id),
            });
        }
        Ok(snap)
    }

    /// Writes a snapshot manifest (create-only). Call only once every chunk it names is stored.
    pub async fn save_snapshot(&self, snap: &Snapshot) -> Result<()> {
        let json = serde_json::to_vec(snap).expect("manifest serialises");
        let raw = self.keys.seal(ObjectType::Snapshot, &snap.id.0, &json, 3);
        // Its chunks were written batched: durable before anything names them.
        self.store.flush().await?;
        self.store
            .put(&snap.id.object_key(), raw.clone(), PutMode::CreateOnly)
            .await?;
        self.write_cache(&snap.id, &raw);
        Ok(())
    }

    /// Finds a snapshot by `latest`, a full id or a unique id prefix.
    pub async fn find_snapshot(&self, query: &str) -> Result<Snapshot> {
        let not_found = || Error::SnapshotNotFound {
            query: query.to_string(),
            location: self.location(),
        };
        if query == "latest" {
            return self.snapshots().await?.pop().ok_or_else(not_found);
        }
        self.load_snapshot(&self.find_snapshot_id(query).await?)
            .await
    }

    /// The id a query names, without opening its manifest (`latest` opens them all): a damaged
    /// snapshot can be forgotten by its id.
    pub async fn find_snapshot_id(&self, query: &str) -> Result<SnapshotId> {
        if query == "latest" {
            return self.snapshots().await?.pop().map(|s| s.id).ok_or_else(|| {
                Error::SnapshotNotFound {
                    query: query.to_string(),
                    location: self.location(),
                }
            });
        }
        let ids = self.snapshot_ids().await?;
        let matches: Vec<_> = ids
            .iter()
            .filter(|id| id.to_hex().starts_with(query))
            .collect();
        match matches.as_slice() {
            [] => Err(Error::SnapshotNotFound {
                query: query.to_string(),
                location: self.location(),
            }),
            [one] => Ok(**one),
            many => Err(Error::SnapshotAmbiguous {
                query: query.to_string(),
                candidates: many
                    .iter()
                    .map(|i| i.short())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Like [`Repository::find_snapshot`], but `latest` means the newest snapshot that
    /// `filter` accepts: of its host and tags, holding every item it names (a run of
    /// `--source db` only must not hide the last full run's volume, nor another host's run this
    /// host's). An id or prefix names one snapshot whatever its host; its items must be there.
    pub async fn find_snapshot_matching(
        &self,
        query: &str,
        filter: &SnapshotFilter,
    ) -> Result<Snapshot> {
        if query != "latest" {
            let s = self.find_snapshot(query).await?;
            if !filter.holds_items(&s) {
                return Err(Error::ItemNotFound {
                    snapshot: s.id,
                    item: filter.items.join(", "),
                    available: s.source_set().join(", "),
                });
            }
            return Ok(s);
        }
        let snaps = self.snapshots().await?;
        let of_host: Vec<&Snapshot> = snaps.iter().filter(|s| filter.selects(s)).collect();
        // An incomplete snapshot stands for `latest` only when the items asked for are in it.
        if let Some(s) = of_host
            .iter()
            .rev()
            .find(|s| filter.holds_items(s) && (!s.is_incomplete() || !filter.items.is_empty()))
        {
            return Ok((*s).clone());
        }
        // Name what the newest candidate does have: the usual cause is a typo.
        if let Some(newest) = of_host.last() {
            return Err(Error::ItemNotFound {
                snapshot: newest.id,
                item: filter.items.join(", "),
                available: newest.source_set().join(", "),
            });
        }
        Err(Error::NoSnapshotMatches {
            filter: filter.describe(),
            location: self.location(),
            present: SnapshotFilter::present(&snaps),
        })
    }

    /// Chunks named by the given snapshots.
    pub fn chunks_of(snapshots: &[Snapshot]) -> HashSet<ChunkId> {
        snapshots
            .iter()
            .flat_map(|s| s.items.iter().flat_map(|i| i.all_chunks().copied()))
            .collect()
    }

    /// Snapshots marked protected (`protect/<id>`): never removed by a retention policy.
    pub async fn protected(&self) -> Result<std::collections::BTreeSet<SnapshotId>> {
        Ok(self
            .store
            .list("protect/")
            .await?
            .iter()
            .filter_map(|m| m.key.trim_start_matches("protect/").parse().ok())
            .collect())
    }

    /// Marks a snapshot protected, or removes the mark.
    pub async fn set_protected(&self, id: &SnapshotId, protected: bool) -> Result<()> {
        let key = format!("protect/{id}");
        if protected {
            self.store.put(&key, Vec::new(), PutMode::Overwrite).await
        } else {
            self.store.delete(&key).await
        }
    }

    /// Removes snapshot manifests (their chunks stay until garbage collection). Protected
    /// snapshots are refused; snapshots still under Object Lock retention are skipped and
    /// reported, not treated as errors.
    pub async fn forget(&self, ids: &[SnapshotId]) -> Result<ForgetReport> {
        let protected = self.protected().await?;
        if let Some(p) = ids.iter().find(|i| protected.contains(i)) {
            return Err(Error::Usage(format!(
                "snapshot {} is protected; `lifeboat-backup unprotect` it first",
                p.short()
            )));
        }
        let mut report = ForgetReport::default();
        for id in ids {
            match self.store.delete(&id.object_key()).await {
                Ok(()) => report.forgotten.push(*id),
                Err(Error::Retained { .. }) => {
                    report.retained.push(*id);
                    continue;
                }
                Err(e) => return Err(e),
            }
            if let Some(p) = self.cache_path(id) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(report)
    }

    /// Key slots of the repository that parse and are intact.
    pub async fn key_slots(&self) -> Result<Vec<KeySlot>> {
        Ok(read_slots(&*self.store).await?.0)
    }

    /// Key slot objects that are damaged.
    pub async fn damaged_key_slots(&self) -> Result<Vec<DamagedSlot>> {
        Ok(read_slots(&*self.store).await?.1)
    }

    /// Adds a key slot for `secret`; data is not touched.
    pub async fn add_key(
        &self,
        secret: &Secret,
        kdf: KdfParams,
        label: Option<String>,
    ) -> Result<KeySlot> {
        let slot = KeySlot::create(&self.keys.master(), secret, kdf, label)?;
        self.store
            .put(&slot.id.object_key(), to_json(&slot), PutMode::CreateOnly)
            .await?;
        Ok(slot)
    }

    /// Removes a key slot; refuses to remove the last one.
    pub async fn remove_key(&self, id_or_prefix: &str) -> Result<SlotId> {
        let slots = self.key_slots().await?;
        let hits: Vec<_> = slots
            .iter()
            .filter(|s| s.id.to_hex().starts_with(id_or_prefix))
            .collect();
        let slot = match hits.as_slice() {
            [one] => one.id,
            [] => {
                return Err(Error::KeySlot {
                    detail: format!("no key slot {id_or_prefix} in {}", self.location()),
                });
            }
            _ => {
                return Err(Error::KeySlot {
                    detail: format!("key slot prefix {id_or_prefix} is ambiguous"),
                });
            }
        };
        if slots.len() == 1 {
            return Err(Error::KeySlot {
                detail: format!(
                    "slot {slot} is the last key slot; removing it would make the repository unreadable"
                ),
            });
        }
        self.store.delete(&slot.object_key()).await?;
        Ok(slot)
    }

    /// Where a volume item's file cache lives, if caching is on.
    pub fn file_cache_path(&self, item: &str) -> Option<PathBuf> {
        self.cache.as_ref().map(|c| c.join("files").join(item))
    }

    fn cache_path(&self, id: &SnapshotId) -> Option<PathBuf> {
        self.cache
            .as_ref()
            .map(|c| c.join("snapshots").join(id.to_hex()))
    }

    fn write_cache(&self, id: &SnapshotId, raw: &[u8]) {
        // The cache is an optimisation: failing to write it must not fail a backup.
        if let Some(p) = self.cache_path(id) {
            let tmp = p.with_extension(format!("tmp{}", rand::random::<u32>()));
            let ok = std::fs::create_dir_all(p.parent().expect("has parent")).is_ok()
                && std::fs::write(&tmp, raw).is_ok()
                && std::fs::rename(&tmp, &p).is_ok();
            if !ok {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    fn prune_cache(&self, live: &[SnapshotId]) {
        let Some(dir) = self.cache.as_ref().map(|c| c.join("snapshots")) else {
            return;
        };
        let live: HashSet<String> = live.iter().map(|i| i.to_hex()).collect();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if !live.contains(&*e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn cache_dir(opts: &CacheOptions, repo_id: &str) -> Option<PathBuf> {
    opts.root().map(|r| r.join(repo_id))
}

fn random_64() -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(&rand::random::<[u8; 32]>());
    m[32..].copy_from_slice(&rand::random::<[u8; 32]>());
    m
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("serialises")
}

/// A key slot object that does not parse or whose digest does not match.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedSlot {
    pub key: String,
    pub reason: String,
}

async fn read_slots(store: &dyn Store) -> Result<(Vec<KeySlot>, Vec<DamagedSlot>)> {
    let mut slots = Vec::new();
    let mut damaged = Vec::new();
    for m in store.list("keys/").await? {
        let raw = match store.get(&m.key).await {
            Ok(raw) => raw,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let slot = serde_json::from_slice::<KeySlot>(&raw)
            .map_err(|e| format!("not a key slot: {e}"))
            .and_then(|s| match s.damage() {
                Some(why) => Err(why),
                None => Ok(s),
            });
        match slot {
            Ok(s) => slots.push(s),
            Err(reason) => damaged.push(DamagedSlot { key: m.key, reason }),
        }
    }
    Ok((slots, damaged))
}

async fn unlock(store: &dyn Store, secret: &Secret) -> Result<(Zeroizing<[u8; 64]>, SlotId)> {
    let (slots, mut damaged) = read_slots(store).await?;
    for slot in &slots {
        // A slot that cannot be used is passed over: another may open.
        match slot.unlock(secret) {
            Ok(Some(master)) => return Ok((master, slot.id)),
            Ok(None) => {}
            Err(e @ (Error::Format { .. } | Error::KeySlot { .. })) => damaged.push(DamagedSlot {
                key: slot.id.object_key(),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    if !damaged.is_empty() {
        return Err(Error::KeySlotDamaged {
            location: store.location(),
            slots: damaged
                .iter()
                .map(|d| format!("{} ({})", d.key, d.reason))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Err(Error::WrongKey {
        location: store.location(),
        secret_kind: secret.kind(),
    })
}
