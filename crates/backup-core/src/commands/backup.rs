//! The backup pipeline: source → chunker → id/dedup → zstd+AES-GCM → store, then the snapshot.
//!
//! Per item: a chunker task cuts the stream; up to `concurrency` chunks are in flight at once,
//! each hashed, checked against the dedup set, sealed on the blocking pool (at most one chunk
//! per core at a time, so waiting on the store never idles a core) and stored; results
//! are consumed in stream order. The snapshot manifest is written only after every item's chunks
//! are stored, so a failed or interrupted run leaves no snapshot (only reusable chunks).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;
use serde::Serialize;

use crate::anomaly::{self, AnomalyRules, OnAnomaly};
use crate::chunk::{Chunked, spawn_chunker, spawn_piece_chunker};
use crate::content::packer::Packer;
use crate::content::writer::{Stored, store_chunk};
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::manifest::{
    CatalogRef, DigestKind, Facts, FailedSource, Item, ItemKind, Snapshot, validate_item_name,
};
use crate::markers::RunMarker;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::source::{
    CacheSlot, CachedChunk, CachedFile, FileCache, FileKey, HEAD_PEEK, PieceContext, Source,
};
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// How to run a backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Host recorded in the snapshot (default: this machine's hostname).
    pub host: Option<String>,
    pub tags: Vec<String>,
    /// zstd level (1–19) for every item; `None`: each source's own default
    /// ([`Source::compression_level`]: 1 for streams and volumes, see docs/BENCHMARKS.md,
    /// "Defaults"; more for base backups, whose next one stores every changed file again).
    pub compression_level: Option<i32>,
    /// Chunks in flight per item (default: 4 × cores + 4). CPU work on them is limited to one
    /// chunk per core (see [`blocking`]); the rest wait on the store (a local put's two fsyncs
    /// take ~2 ms here).
    pub concurrency: usize,
    pub progress: Option<Arc<Progress>>,
    /// Awaited after every chunk is stored and before the snapshot is written (tests use it
    /// to pause a backup at its most delicate point).
    pub before_commit: Option<CommitHook>,
    /// Markers older than this are a dead process's (see [`crate::commands::gc`]).
    pub stale_after: std::time::Duration,
    /// Anomaly rules by source name (others: warn, no minimums); see [`crate::anomaly`].
    pub anomaly: HashMap<String, AnomalyRules>,
    /// A failing source does not fail the run: the others are committed in a snapshot marked
    /// incomplete ([`Snapshot::incomplete`]). Off: all or nothing.
    pub partial: bool,
}

/// An async callback; see [`BackupOptions::before_commit`].
#[derive(Clone)]
pub struct CommitHook(pub Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>);

impl std::fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            host: None,
            tags: Vec::new(),
            compression_level: None,
            concurrency: default_concurrency(),
            progress: None,
            before_commit: None,
            stale_after: crate::markers::STALE_AFTER,
            anomaly: HashMap::new(),
            partial: false,
        }
    }
}

/// zstd level 1 backs up ~1.7× faster than level 3 here for 3–9% more stored bytes (measured
/// in docs/BENCHMARKS.md); level 3 is one setting away for repositories that pay by the byte.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// The zstd levels a backup accepts (0 would mean zstd's default, 20+ need far more memory).
pub const COMPRESSION_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

pub use crate::runtime::default_concurrency;

/// What one item of a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    pub name: String,
    pub kind: ItemKind,
    pub size: u64,
    pub chunks: usize,
    /// Chunks written by this run.
    pub chunks_new: usize,
    /// Bytes written to the store by this run (after compression and encryption).
    pub stored_bytes: u64,
    pub seconds: f64,
    /// How the item differs from the same source's last one (empty: it looks alike).
    pub anomalies: Vec<String>,
    /// Entries that could not be read and are not in the item (path: why).
    pub unreadable: Vec<String>,
}

/// What a backup run did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub snapshot: SnapshotId,
    pub items: Vec<ItemReport>,
    pub size: u64,
    pub chunks_new: usize,
    pub stored_bytes: u64,
    pub seconds: f64,
    /// Store requests retried during the run (throttling, 5xx, dropped connections).
    pub store_retries: u64,
    /// What went wrong without failing the run (a volume's file cache not saved).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Sources that failed in a partial run: the snapshot is incomplete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedSource>,
}

impl BackupReport {
    /// Something meant to be backed up is not in the snapshot: a source failed (`--partial`)
    /// or files could not be read. The run exits [`crate::error::EXIT_INCOMPLETE`] (restic's
    /// 3), and the snapshot stands.
    pub fn lacks_data(&self) -> bool {
        !self.failed.is_empty() || self.items.iter().any(|i| !i.unreadable.is_empty())
    }
}

/// Backs up every source into one snapshot, all or nothing.
pub async fn backup(
    repo: &Repository,
    sources: Vec<Box<dyn Source>>,
    opts: &BackupOptions,
) -> Result<BackupReport> {
    let t0 = Instant::now();
    let time = Utc::now();
    let mut names = HashSet::new();
    for s in &sources {
        if !validate_item_name(s.name()) {
            return Err(Error::Usage(format!(
                "item name {:?} is not allowed: use letters, digits, '.', '_' and '-'",
                s.name()
            )));
        }
        if !names.insert(s.name().to_string()) {
            return Err(Error::Usage(format!("two sources are named {}", s.name())));
        }
    }
    if sources.is_empty() {
        return Err(Error::Usage("nothing to back up: no sources given".into()));
    }
    if let Some(level) = opts.compression_level
        && !COMPRESSION_LEVELS.contains(&level)
    {
        return Err(Error::Usage(format!(
            "compression level {level} is out of range: zstd levels {}–{} (1, the default, is fastest; 3 saves a few % more)",
            COMPRESSION_LEVELS.start(),
            COMPRESSION_LEVELS.end()
        )));
    }
    // Announce the run before reading anything, so a concurrent GC keeps every chunk we may
    // rely on; wait for a running GC to finish first.
    let retries_before = repo.store().retries();
    let marker = RunMarker::start(repo, opts.stale_after).await?;
    let result = run_items(repo, sources, opts, time).await;
    marker.finish().await;
    let (snapshot, reports, warnings) = result?;
    Ok(BackupReport {
        failed: snapshot.incomplete.clone(),
        snapshot: snapshot.id,
        size: reports.iter().map(|r| r.size).sum(),
        chunks_new: reports.iter().map(|r| r.chunks_new).sum(),
        stored_bytes: reports.iter().map(|r| r.stored_bytes).sum(),
        items: reports,
        seconds: t0.elapsed().as_secs_f64(),
        store_retries: repo.store().retries() - retries_before,
        warnings,
    })
}

/// Each item of this host's newest snapshot holding it (without its chunk list): what the
/// anomaly check compares with, and the progress line's estimate of the total (a stream's
/// length, or a volume's, is known only once it has been read).
fn last_items(snapshots: &[Snapshot], host: &str) -> HashMap<String, Item> {
    let mut out = HashMap::new();
    // Newest first, each name once, without its chunk list: a copy of every item of every
    // snapshot would be a copy of every chunk id in the repository.
    for s in snapshots.iter().rev().filter(|s| s.host == host) {
        for i in &s.items {
            out.entry(i.name.clone()).or_insert_with(|| {
                let mut facts = i.facts.clone();
                facts.remove(anomaly::FACT);
                Item {
                    name: i.name.clone(),
                    kind: i.kind,
                    format: i.format.clone(),
                    size: i.size,
                    sha256: i.sha256.clone(),
                    digest: i.digest,
                    head: None,
                    chunks: Vec::new(),
                    catalog: None,
                    started: i.started,
                    finished: i.finished,
                    facts,
                }
            });
        }
    }
    out
}

async fn run_items(
    repo: &Repository,
    sources: Vec<Box<dyn Source>>,
    opts: &BackupOptions,
    time: chrono::DateTime<Utc>,
) -> Result<(Snapshot, Vec<ItemReport>, Vec<String>)> {
    let snapshots = repo.snapshots().await?;
    let known = Arc::new(Mutex::new(Repository::chunks_of(&snapshots)));
    let host = opts.host.clone().unwrap_or_else(crate::hostname);
    let previous = last_items(&snapshots, &host);
    drop(snapshots);
    // Read now, after the GC protocol let this run start: an index read earlier may name
    // packs a GC has deleted since.
    let packer = Arc::new(Packer::new(repo.reload_packs().await?, repo.index_cache()));
    let mut items = Vec::new();
    let mut reports = Vec::new();
    let mut reused = HashSet::new();
    let mut caches = Vec::new();
    let mut anomalies = Anomalies::default();
    let mut noted = Vec::new();
    let (mut failed, mut first_error) = (Vec::new(), None);
    for mut src in sources {
        let last = previous.get(src.name());
        let estimate = last.map(|i| i.size);
        let mut done = match backup_item(repo, &mut *src, &known, &packer, opts, estimate).await {
            Ok(done) => done,
            // What it stored is unreferenced: reused next time or collected.
            Err(e) if opts.partial => {
                failed.push(FailedSource {
                    source: src.name().to_string(),
                    error: e.to_string(),
                });
                first_error.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        done.report.anomalies = anomalies.check(&mut done.item, last, opts);
        done.report.unreadable = strings(&done.item.facts, "unreadable");
        noted.extend(item_warnings(&done.item.name, &done.item.facts));
        caches.extend(done.cache);
        items.push(done.item);
        reports.push(done.report);
        reused.extend(done.reused);
    }
    // Every item was read, so every anomaly is named at once; nothing is committed.
    anomalies.fail_if_any()?;
    if let (true, Some(e)) = (items.is_empty(), first_error) {
        return Err(e);
    }
    if let Some(last) = packer.take() {
        packer.write(last, &**repo.store(), repo.keys()).await?;
    }
    if repo.store().retention_days().is_some() {
        extend_retention(repo, reused, opts.concurrency).await?;
    }
    if let Some(hook) = &opts.before_commit {
        (hook.0)().await;
    }
    let snapshot = Snapshot {
        version: 1,
        id: SnapshotId::random(),
        time,
        finished: Utc::now(),
        host: opts.host.clone().unwrap_or_else(crate::hostname),
        tags: opts.tags.clone(),
        program: format!("lifeboat {}", env!("CARGO_PKG_VERSION")),
        items,
        incomplete: failed,
    };
    repo.save_snapshot(&snapshot).await?;
    // Only now: a cache naming chunks of a snapshot that was never written would be trusted
    // next time while those chunks may be collected.
    let mut warnings = anomalies.warnings;
    warnings.extend(noted);
    for (slot, cache) in caches {
        // An optimisation: failing to write it must not fail the backup, but the operator
        // should know why the next run reads every file again.
        if let Err(e) = slot.save(&cache) {
            warnings.push(format!(
                "file cache {} not saved: {e}; the next backup reads every file of {} again (check that the cache directory is writable, or set --cache-dir)",
                slot.path().display(),
                slot.item()
            ));
        }
    }
    Ok((snapshot, reports, warnings))
}

/// The strings of a list fact (`warnings`, `unreadable`), which any engine may record.
fn strings(facts: &Facts, key: &str) -> Vec<String> {
    facts
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What an item's engine asked the run to say: its warnings, and what it could not read.
fn item_warnings(item: &str, facts: &Facts) -> Vec<String> {
    const SHOWN: usize = 10;
    let mut out: Vec<String> = strings(facts, "warnings")
        .into_iter()
        .map(|w| format!("source {item}: {w}"))
        .collect();
    let unreadable = strings(facts, "unreadable");
    if !unreadable.is_empty() {
        let more = unreadable.len().saturating_sub(SHOWN);
        out.push(format!(
            "source {item}: {} entr{} could not be read and {} not in the snapshot: {}{}",
            unreadable.len(),
            if unreadable.len() == 1 { "y" } else { "ies" },
            if unreadable.len() == 1 { "is" } else { "are" },
            unreadable[..unreadable.len().min(SHOWN)].join("; "),
            if more > 0 {
                format!("; and {more} more (`lifeboat-restore show` lists them)")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// Anomalies of a run so far: warnings (the snapshot is flagged) and failures (it is not
/// written).
#[derive(Default)]
struct Anomalies {
    warnings: Vec<String>,
    failures: Vec<(String, Vec<String>)>,
}

impl Anomalies {
    /// Compares `item` with the same source's last item; records what is wrong on the item
    /// and returns it.
    fn check(&mut self, item: &mut Item, last: Option<&Item>, opts: &BackupOptions) -> Vec<String> {
        // A source's rules hold for every item it makes (`pg.app`, `pg.globals` of `pg`).
        let rules = opts
            .anomaly
            .get(&item.name)
            .or_else(|| {
                let (source, _) = item.name.split_once('.')?;
                opts.anomaly.get(source)
            })
            .cloned()
            .unwrap_or_default();
        let found = anomaly::check(item, last, &rules);
        if found.is_empty() {
            return found;
        }
        item.facts
            .insert(anomaly::FACT.into(), serde_json::json!(found));
        match rules.on_anomaly {
            OnAnomaly::Warn => self.warnings.push(format!(
                "source {} does not look like last time: {}; the snapshot is flagged (on_anomaly = \"fail\" stops such a run)",
                item.name,
                found.join("; ")
            )),
            OnAnomaly::Fail => self.failures.push((item.name.clone(), found.clone())),
        }
        found
    }

    fn fail_if_any(&self) -> Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        let detail = self
            .failures
            .iter()
            .map(|(name, found)| format!("source {name}: {}", found.join("; ")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Anomaly {
            sources: self.failures.iter().map(|(n, _)| n.clone()).collect(),
            detail,
        })
    }
}

/// One result of the pipeline, in stream order.
enum Outcome {
    Chunk {
        id: ChunkId,
        len: u64,
        stored: Stored,
    },
    File(Option<FileKey>),
}

/// How an item's bytes reach the chunker.
enum Feed {
    Stream(tokio::task::JoinHandle<std::io::Result<crate::chunk::StreamDigest>>),
    Pieces(tokio::task::JoinHandle<std::io::Result<()>>),
}

impl Feed {
    fn abort(&self) {
        match self {
            Feed::Stream(t) => t.abort(),
            Feed::Pieces(t) => t.abort(),
        }
    }
}

/// A file being matched to the chunks it became, for the next run's file cache.
struct OpenFile {
    key: FileKey,
    got: u64,
    chunks: Vec<CachedChunk>,
}

/// What backing up one item produced.
struct ItemOutcome {
    item: Item,
    report: ItemReport,
    /// Chunks this item named without writing them (their Object Lock may need extending).
    reused: Vec<ChunkId>,
    /// The item's file cache, saved once the snapshot is written.
    cache: Option<(CacheSlot, FileCache)>,
}

/// How a chunk counts for the report, once the packer has taken it.
enum Counted {
    New(u64),
    Reused,
}

/// An item's chunks in stream order, counted, with the file cache they fill.
struct Tally {
    chunks: Vec<ChunkId>,
    /// Each chunk's plaintext length, for the item's catalog.
    lens: Vec<u64>,
    reused: Vec<ChunkId>,
    chunks_new: usize,
    stored_bytes: u64,
    size: u64,
    /// With pieces, the item's digest is over its chunk ids (a cached file is never read).
    per_chunk: bool,
    list_digest: Sha256,
    cache: Option<FileCache>,
    file: Option<OpenFile>,
}

impl Tally {
    fn new(per_chunk: bool) -> Self {
        Tally {
            chunks: Vec::new(),
            lens: Vec::new(),
            reused: Vec::new(),
            chunks_new: 0,
            stored_bytes: 0,
            size: 0,
            per_chunk,
            list_digest: Sha256::new(),
            cache: per_chunk.then(FileCache::new),
            file: None,
        }
    }

    fn start_file(&mut self, key: Option<FileKey>) {
        self.file = key.map(|key| OpenFile {
            key,
            got: 0,
            chunks: Vec::new(),
        });
    }

    fn chunk(&mut self, id: ChunkId, len: u64, counted: Counted) {
        self.chunks.push(id);
        self.lens.push(len);
        self.size += len;
        match counted {
            Counted::New(n) => {
                self.chunks_new += 1;
                self.stored_bytes += n;
            }
            Counted::Reused => self.reused.push(id),
        }
        if !self.per_chunk {
            return;
        }
        self.list_digest.update(id.0);
        if let Some(f) = &mut self.file {
            f.got += len;
            f.chunks.push(CachedChunk { id, len });
        }
        // Cuts fence a file's data, so its chunks end exactly at its size.
        if let Some(f) = self.file.take_if(|f| f.got >= f.key.size)
            && f.got == f.key.size
            && let Some(c) = &mut self.cache
        {
            c.insert(CachedFile {
                key: f.key,
                chunks: f.chunks,
            });
        }
    }
}

/// Full packs being written while the item's loop goes on: at most two at a time.
#[derive(Default)]
struct PackWrites(std::collections::VecDeque<tokio::task::JoinHandle<Result<()>>>);

impl PackWrites {
    /// Hands a sealed small chunk to the packer, starting a pack's write when one fills.
    fn pack(
        &mut self,
        repo: &Repository,
        packer: &Arc<Packer>,
        id: ChunkId,
        object: &[u8],
        len: u64,
    ) -> Counted {
        match packer.add(id, object, len as u32) {
            None => Counted::Reused,
            Some(full) => {
                if let Some(pack) = full {
                    let (repo, packer) = (repo.clone(), packer.clone());
                    self.0.push_back(tokio::spawn(async move {
                        packer.write(pack, &**repo.store(), repo.keys()).await
                    }));
                }
                Counted::New(object.len() as u64)
            }
        }
    }

    /// Waits for the oldest write once more than two are running.
    async fn throttle(&mut self) -> Result<()> {
        if self.0.len() > 2 {
            return join_write(self.0.pop_front().expect("more than two")).await;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        while let Some(w) = self.0.pop_front() {
            join_write(w).await?;
        }
        Ok(())
    }

    fn abort(self) {
        for w in self.0 {
            w.abort();
        }
    }
}

async fn backup_item(
    repo: &Repository,
    src: &mut dyn Source,
    known: &Arc<Mutex<HashSet<ChunkId>>>,
    packer: &Arc<Packer>,
    opts: &BackupOptions,
    estimate: Option<u64>,
) -> Result<ItemOutcome> {
    let t0 = Instant::now();
    let started = Utc::now();
    let name = src.name().to_string();
    if let Some(p) = &opts.progress {
        p.start_item_estimated(&name, estimate.unwrap_or(0));
    }
    let slot = repo
        .file_cache_path(&name)
        .map(|p| CacheSlot::new(p, repo.keys().clone(), &name));
    let (messages, feed, head) = open_feed(repo, src, slot.clone(), known).await?;
    let mut tally = Tally::new(matches!(feed, Feed::Pieces(_)));
    let mut writes = PackWrites::default();
    let level = opts
        .compression_level
        .unwrap_or_else(|| src.compression_level());
    let results = messages
        .map(|m| process(repo, m, known.clone(), packer.clone(), level))
        .buffered(opts.concurrency.max(1));
    let mut stored = consume(repo, packer, results, &mut tally, &mut writes, opts).await;
    if stored.is_ok() {
        stored = writes.finish().await;
    }
    if let Err(e) = stored {
        writes.abort();
        feed.abort();
        return Err(e);
    }
    let stream_digest = finish_feed(feed, src, &name).await?;
    let facts = src.finish().await?;
    let catalog = match src.take_catalog() {
        Some(pending) => {
            let lens = std::mem::take(&mut tally.lens);
            let encoded = pending.encoded(&lens);
            let stored = store_catalog(repo, encoded, known, packer, &mut tally, &mut writes).await;
            match stored {
                Ok(r) => Some(r),
                Err(e) => {
                    writes.abort();
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if let Err(e) = writes.finish().await {
        writes.abort();
        return Err(e);
    }
    let (size, sha256, digest) = match stream_digest {
        Some(d) => (d.size, d.sha256, DigestKind::Stream),
        None => (
            tally.size,
            tally.list_digest.finalize().into(),
            DigestKind::ChunkIds,
        ),
    };
    let item = Item {
        name: name.clone(),
        kind: src.kind(),
        format: src.format().to_string(),
        size,
        sha256: hex::encode(sha256),
        digest,
        head: (!head.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(&head)),
        chunks: tally.chunks,
        catalog,
        started,
        finished: Utc::now(),
        facts,
    };
    let report = ItemReport {
        name,
        kind: item.kind,
        size: item.size,
        chunks: item.chunks.len(),
        chunks_new: tally.chunks_new,
        stored_bytes: tally.stored_bytes,
        seconds: t0.elapsed().as_secs_f64(),
        anomalies: Vec::new(),
        unreadable: Vec::new(),
    };
    Ok(ItemOutcome {
        item,
        report,
        reused: tally.reused,
        cache: slot.zip(tally.cache),
    })
}

/// Stores an item's catalog as slices, each a chunk (packed when small, deduplicated like any
/// other), counted in the item's report.
async fn store_catalog(
    repo: &Repository,
    mut encoded: impl std::io::Read,
    known: &Arc<Mutex<HashSet<ChunkId>>>,
    packer: &Arc<Packer>,
    tally: &mut Tally,
    writes: &mut PackWrites,
) -> Result<CatalogRef> {
    let mut chunks = Vec::new();
    let (mut size, mut sha) = (0u64, Sha256::new());
    loop {
        let mut slice = Vec::with_capacity(crate::catalog::SLICE);
        let mut next = std::io::Read::take(&mut encoded, crate::catalog::SLICE as u64);
        std::io::Read::read_to_end(&mut next, &mut slice)
            .map_err(|e| Error::io("encoding the file catalog", e))?;
        if slice.is_empty() {
            break;
        }
        size += slice.len() as u64;
        sha.update(&slice);
        let data = Arc::new(slice);
        let (id, len, stored) = store_chunk(repo, data, known.clone(), packer, 3).await?;
        match stored {
            Stored::Pack(object) => {
                if let Counted::New(n) = writes.pack(repo, packer, id, &object, len) {
                    tally.stored_bytes += n;
                }
            }
            Stored::New(n) => tally.stored_bytes += n,
            Stored::Reused => tally.reused.push(id),
        }
        writes.throttle().await?;
        chunks.push(id);
    }
    Ok(CatalogRef {
        chunks,
        size,
        sha256: hex::encode(sha.finalize()),
    })
}

/// Reads the pipeline's results in stream order into the tally, packing small chunks.
async fn consume(
    repo: &Repository,
    packer: &Arc<Packer>,
    mut results: impl futures::Stream<Item = Result<Outcome>> + Unpin,
    tally: &mut Tally,
    writes: &mut PackWrites,
    opts: &BackupOptions,
) -> Result<()> {
    while let Some(r) = results.next().await {
        let (id, len, stored) = match r? {
            Outcome::File(key) => {
                tally.start_file(key);
                continue;
            }
            Outcome::Chunk { id, len, stored } => (id, len, stored),
        };
        let counted = match stored {
            Stored::Pack(object) => writes.pack(repo, packer, id, &object, len),
            Stored::New(n) => Counted::New(n),
            Stored::Reused => Counted::Reused,
        };
        tally.chunk(id, len, counted);
        writes.throttle().await?;
        if let Some(p) = &opts.progress {
            p.add(len);
        }
    }
    Ok(())
}

/// Starts the item's source and chunker: as pieces when the source knows its structure, else
/// as a stream whose volatile header (if any) is kept apart. Returns the header too.
async fn open_feed(
    repo: &Repository,
    src: &mut dyn Source,
    cache: Option<CacheSlot>,
    known: &Arc<Mutex<HashSet<ChunkId>>>,
) -> Result<(futures::stream::BoxStream<'static, Chunked>, Feed, Vec<u8>)> {
    let params = repo.config().chunker_params;
    let ctx = PieceContext {
        cache,
        known: known.clone(),
        aligned_min: u64::from(params.min_size),
        group_min: params.file_group(),
    };
    if let Some(pieces) = src.open_pieces(ctx).await? {
        let (mut rx, task) = spawn_piece_chunker(pieces, params, 2);
        let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return Ok((s.boxed(), Feed::Pieces(task), Vec::new()));
    }
    let mut reader = src.open().await?;
    let mut head = Vec::new();
    if src.has_volatile_prefix() {
        let mut peek = Vec::with_capacity(HEAD_PEEK);
        (&mut reader)
            .take(HEAD_PEEK as u64)
            .read_to_end(&mut peek)
            .await
            .map_err(|e| Error::SourceFailed {
                item: src.name().to_string(),
                detail: format!("reading the stream: {e}"),
            })?;
        let n = src.volatile_prefix(&peek).min(peek.len());
        head = peek[..n].to_vec();
        let rest = std::io::Cursor::new(peek[n..].to_vec());
        reader = Box::new(rest.chain(reader));
    }
    let (mut rx, task) = spawn_chunker(reader, params, 2, &head);
    let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Chunked::Data);
    Ok((s.boxed(), Feed::Stream(task), head))
}

/// Waits for the feed to end; a stream feed returns its digest.
async fn finish_feed(
    feed: Feed,
    src: &mut dyn Source,
    name: &str,
) -> Result<Option<crate::chunk::StreamDigest>> {
    let fed = match feed {
        Feed::Stream(t) => t.await.map(|r| r.map(Some)),
        Feed::Pieces(t) => t.await.map(|r| r.map(|()| None)),
    };
    match fed {
        Ok(Ok(d)) => Ok(d),
        // The producer's own report (pg_dump's message, the tar walker's error) explains a
        // broken stream better than the read error does.
        Ok(Err(read_err)) => Err(match src.finish().await {
            Err(e) => e,
            Ok(_) => Error::SourceFailed {
                item: name.to_string(),
                detail: format!("reading the stream: {read_err}"),
            },
        }),
        Err(join) => Err(Error::io("chunker task", std::io::Error::other(join))),
    }
}

/// One message of the chunker through the pipeline: new data is identified, deduplicated and
/// sealed; cached chunks and file marks pass through.
async fn process(
    repo: &Repository,
    m: Chunked,
    known: Arc<Mutex<HashSet<ChunkId>>>,
    packer: Arc<Packer>,
    level: i32,
) -> Result<Outcome> {
    match m {
        Chunked::Data(data) => {
            let (id, len, stored) = store_chunk(repo, data, known, &packer, level).await?;
            Ok(Outcome::Chunk { id, len, stored })
        }
        Chunked::Stored(c) => Ok(Outcome::Chunk {
            id: c.id,
            len: c.len,
            stored: Stored::Reused,
        }),
        Chunked::File(key) => Ok(Outcome::File(key)),
    }
}

async fn join_write(w: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    w.await
        .map_err(|e| Error::io("pack writer task", std::io::Error::other(e)))?
}

/// Object Lock: a reused chunk may be locked for less time than this snapshot needs; extend it
/// so every object of the new snapshot is protected for the full period.
async fn extend_retention(
    repo: &Repository,
    chunks: HashSet<ChunkId>,
    concurrency: usize,
) -> Result<()> {
    let mut objects = HashSet::new();
    let packs = repo.packs().await?;
    for id in chunks {
        match packs.get(&id) {
            // A locked pack is only readable through its index: both must last.
            Some(at) => {
                objects.insert(at.pack.object_key());
                objects.insert(at.pack.index_key());
            }
            None => {
                objects.insert(id.object_key());
            }
        }
    }
    let mut work = futures::stream::iter(objects)
        .map(|key| async move { repo.store().extend_retention(&key).await })
        .buffer_unordered(concurrency.max(4) * 2);
    while let Some(r) = work.next().await {
        r?;
    }
    Ok(())
}
