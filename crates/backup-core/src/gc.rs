//! Garbage collection without an exclusive lock: delete chunks no snapshot names, once they are
//! older than a grace period, and never while a backup is running.
//!
//! Protocol (docs/FORMAT.md, "Garbage collection"):
//! - a backup writes `markers/run-<id>` before it reads anything, refreshes it every minute,
//!   waits while a live `markers/gc-<id>` exists, and deletes its marker after its snapshot;
//! - GC writes `markers/gc-<id>`, defers (deletes nothing) if a live run marker exists, lists
//!   snapshots and chunks, checks the run markers again, then deletes unreferenced chunks older
//!   than the grace period, and removes its marker.
//!
//! A marker not refreshed for `stale_after` belongs to a dead process and is ignored (and
//! removed by GC). No marker is exclusive: two GCs may run together (both only delete
//! unreferenced chunks), and a crashed holder never blocks the next cron run for long.
//!
//! Packs are deleted whole. When more than `max_unused` of the pack bytes are unreferenced,
//! the emptiest packs past the grace period are repacked: their referenced chunks, each
//! verified, are copied as sealed into new packs (pack, then index), and only then are the old
//! index and pack deleted. A chunk that also lives elsewhere is not copied, so a GC that died
//! between copying and deleting leaves duplicates that the next one clears.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId, id_in_key};
use crate::repository::Repository;
use crate::store::{ObjectMeta, PutMode, Store};

/// How often a running backup refreshes its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// A marker older than this is a dead process's.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Options of a GC run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced chunks younger than this are kept (a crashed run's rerun reuses them).
    pub grace: Duration,
    /// Markers not refreshed for this long are ignored.
    pub stale_after: Duration,
    /// Report only.
    pub dry_run: bool,
    /// Fraction of pack bytes that may stay unreferenced; above it the emptiest packs are
    /// repacked until it holds again (1.0: never repack).
    pub max_unused: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(24 * 3600),
            stale_after: STALE_AFTER,
            dry_run: false,
            max_unused: 0.1,
        }
    }
}

/// What a GC run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Set when GC deleted nothing because a backup was running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    pub chunks_total: usize,
    pub chunks_referenced: usize,
    /// Unreferenced but younger than the grace period.
    pub chunks_in_grace: usize,
    pub chunks_deleted: usize,
    pub bytes_deleted: u64,
    /// Objects the store refused to delete because of retention (Object Lock).
    pub skipped_retained: Vec<String>,
    pub stale_markers_removed: usize,
    pub packs_total: usize,
    /// Packs none of whose chunks a snapshot names, or without an index, past the grace period.
    pub packs_deleted: usize,
    pub pack_bytes_deleted: u64,
    /// Bytes of unreferenced chunks left in packs that still hold referenced ones (after any
    /// repacking).
    pub pack_bytes_unreferenced: u64,
    /// Packs rewritten without their unreferenced chunks, and deleted.
    pub packs_repacked: usize,
    /// Referenced bytes copied into new packs by repacking.
    pub repack_bytes_written: u64,
    /// Bytes the repacked packs took, less what was copied out of them.
    pub repack_bytes_freed: u64,
    /// Packs chosen for repacking but left as they are, with the reason (a damaged chunk: run
    /// `check --read-data`).
    pub repack_skipped: Vec<String>,
    /// Index objects whose pack is gone (removed: they would make backups reuse nothing).
    pub dangling_indexes_removed: usize,
    /// Partial writes of killed runs (local temp files) older than the grace period.
    pub incomplete_removed: usize,
    pub incomplete_bytes: u64,
    pub dry_run: bool,
}

fn age(m: &ObjectMeta) -> Duration {
    m.modified
        .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
        .unwrap_or_default()
}

/// Live markers with `prefix` (`markers/run-`, `markers/gc-`); stale ones are returned apart.
async fn markers(
    store: &dyn Store,
    prefix: &str,
    stale_after: Duration,
) -> Result<(Vec<ObjectMeta>, Vec<ObjectMeta>)> {
    let all = store.list(prefix).await?;
    Ok(all.into_iter().partition(|m| age(m) < stale_after))
}

/// Overwrites the marker `key` in the background, so that others see its holder alive.
fn spawn_heartbeat(
    store: Arc<dyn Store>,
    key: String,
    stale_after: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT.min(stale_after / 4)).await;
            let _ = store.put(&key, Vec::new(), PutMode::Overwrite).await;
        }
    })
}

/// A running backup's marker; refreshed in the background until finished or dropped.
#[derive(Debug)]
pub struct RunMarker {
    store: Arc<dyn Store>,
    key: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl RunMarker {
    /// Writes the marker, then waits while a GC is running (up to `stale_after`).
    pub async fn start(repo: &Repository, stale_after: Duration) -> Result<RunMarker> {
        let store = repo.store().clone();
        let key = format!("markers/run-{}", hex::encode(rand::random::<[u8; 8]>()));
        store.put(&key, Vec::new(), PutMode::CreateOnly).await?;
        let heartbeat = spawn_heartbeat(store.clone(), key.clone(), stale_after);
        let marker = RunMarker {
            store,
            key,
            heartbeat,
        };
        let waited = std::time::Instant::now();
        loop {
            let (live, _) = markers(&*marker.store, "markers/gc-", stale_after).await?;
            if live.is_empty() {
                break;
            }
            if waited.elapsed() > stale_after {
                return Err(Error::Store {
                    location: marker.store.location(),
                    op: "wait for",
                    key: live[0].key.clone(),
                    source: std::io::Error::other("garbage collection still running"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(marker)
    }

    /// Removes the marker (after the snapshot is written, or after a failure).
    pub async fn finish(self) {
        self.heartbeat.abort();
        let _ = self.store.delete(&self.key).await;
    }
}

impl Drop for RunMarker {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Deletes chunks no snapshot names, older than the grace period, unless a backup is running.
pub async fn collect(repo: &Repository, opts: &GcOptions) -> Result<GcReport> {
    let store = repo.store().clone();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let gc_key = format!("markers/gc-{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut heartbeat = None;
    if !opts.dry_run {
        store.put(&gc_key, Vec::new(), PutMode::CreateOnly).await?;
        // Refreshed like a run marker: a repack of a large repository can outlast
        // `stale_after`, and a backup must not take a live GC for a dead one.
        heartbeat = Some(spawn_heartbeat(
            store.clone(),
            gc_key.clone(),
            opts.stale_after,
        ));
    }
    let result = collect_marked(repo, opts, &mut report).await;
    if let Some(h) = heartbeat {
        h.abort();
        let _ = h.await;
        let _ = store.delete(&gc_key).await;
    }
    result.map(|()| report)
}

async fn collect_marked(repo: &Repository, opts: &GcOptions, report: &mut GcReport) -> Result<()> {
    let store = repo.store().clone();
    let (live, stale) = markers(&*store, "markers/run-", opts.stale_after).await?;
    if let Some(m) = live.first() {
        report.deferred = Some(format!(
            "a backup is running ({}); nothing deleted, run prune again later",
            m.key
        ));
        return Ok(());
    }
    let referenced: HashSet<ChunkId> = Repository::chunks_of(&repo.snapshots().await?);
    let chunks = store.list("chunks/").await?;
    report.chunks_total = chunks.len();
    let mut doomed = Vec::new();
    for m in &chunks {
        let Some(id) = id_in_key::<ChunkId>(&m.key) else {
            continue;
        };
        if referenced.contains(&id) {
            report.chunks_referenced += 1;
        } else if age(m) < opts.grace {
            report.chunks_in_grace += 1;
        } else {
            doomed.push(m.clone());
        }
    }
    let index = repo.reload_packs().await?;
    let by_pack = index.by_pack();
    let pack_objects = store.list("packs/").await?;
    report.packs_total = pack_objects.len();
    let mut present = HashSet::new();
    // (index key if any, pack object) to delete, index first: an index must never outlive
    // its pack, or backups would reuse chunks that are gone.
    let mut doomed_packs = Vec::new();
    let mut kept_packs = Vec::new();
    for m in &pack_objects {
        let Some(pack) = id_in_key::<PackId>(&m.key) else {
            continue;
        };
        present.insert(pack);
        let chunks = by_pack.get(&pack).map_or(&[][..], |v| v.as_slice());
        let unreferenced: u64 = chunks
            .iter()
            .filter(|(id, _)| !referenced.contains(id))
            .map(|(_, at)| u64::from(at.length))
            .sum();
        let all_unreferenced = chunks.iter().all(|(id, _)| !referenced.contains(id));
        if all_unreferenced && age(m) >= opts.grace {
            doomed_packs.push(((!chunks.is_empty()).then(|| pack.index_key()), m.clone()));
        } else {
            report.pack_bytes_unreferenced += unreferenced;
            kept_packs.push((pack, m.clone(), unreferenced));
        }
    }
    let dangling: Vec<String> = by_pack
        .keys()
        .filter(|p| !present.contains(p))
        .map(PackId::index_key)
        .collect();
    // A backup that started while we listed may rely on any of these: check again.
    let (live, _) = markers(&*store, "markers/run-", opts.stale_after).await?;
    if let Some(m) = live.first() {
        report.deferred = Some(format!(
            "a backup started during collection ({}); nothing deleted",
            m.key
        ));
        return Ok(());
    }
    for m in doomed {
        if opts.dry_run {
            report.chunks_deleted += 1;
            report.bytes_deleted += m.size;
            continue;
        }
        match store.delete(&m.key).await {
            Ok(()) => {
                report.chunks_deleted += 1;
                report.bytes_deleted += m.size;
            }
            Err(Error::Retained { key, .. }) => report.skipped_retained.push(key),
            Err(e) => return Err(e),
        }
    }
    for (index_key, m) in doomed_packs {
        if !opts.dry_run {
            let deleted = async {
                if let Some(k) = &index_key {
                    store.delete(k).await?;
                }
                store.delete(&m.key).await
            };
            match deleted.await {
                Ok(()) => {}
                Err(Error::Retained { key, .. }) => {
                    report.skipped_retained.push(key);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.packs_deleted += 1;
        report.pack_bytes_deleted += m.size;
    }
    for key in dangling {
        if !opts.dry_run {
            store.delete(&key).await?;
        }
        report.dangling_indexes_removed += 1;
    }
    // Object Lock: the old packs could not be deleted before their retention ends.
    if store.retention_days().is_none() {
        let loose: HashSet<ChunkId> = chunks
            .iter()
            .filter_map(|m| id_in_key::<ChunkId>(&m.key))
            .filter(|id| referenced.contains(id))
            .collect();
        let pick = choose_repacks(kept_packs, opts);
        repack(
            repo,
            &index,
            &by_pack,
            &referenced,
            &loose,
            pick,
            opts,
            report,
        )
        .await?;
    }
    for m in stale {
        if !opts.dry_run {
            store.delete(&m.key).await?;
        }
        report.stale_markers_removed += 1;
    }
    (report.incomplete_removed, report.incomplete_bytes) =
        store.sweep_incomplete(opts.grace, opts.dry_run).await?;
    Ok(())
}

/// The emptiest packs past the grace period, until the unreferenced share of all kept pack
/// bytes is at most `max_unused` (restic's prune works the same way).
fn choose_repacks(
    mut kept: Vec<(PackId, ObjectMeta, u64)>,
    opts: &GcOptions,
) -> Vec<(PackId, ObjectMeta, u64)> {
    let total: u64 = kept.iter().map(|(_, m, _)| m.size).sum();
    let mut unused: u64 = kept.iter().map(|(.., u)| u).sum();
    let allowed = (opts.max_unused.clamp(0.0, 1.0) * total as f64) as u64;
    kept.retain(|(_, m, u)| *u > 0 && age(m) >= opts.grace);
    kept.sort_by(|a, b| {
        let share = |(_, m, u): &(PackId, ObjectMeta, u64)| *u as f64 / m.size.max(1) as f64;
        share(b).total_cmp(&share(a))
    });
    let mut pick = Vec::new();
    for k in kept {
        if unused <= allowed {
            break;
        }
        unused -= k.2;
        pick.push(k);
    }
    pick
}

/// Copies the referenced chunks of `pick` into new packs, then deletes the old packs.
#[allow(clippy::too_many_arguments)]
async fn repack(
    repo: &Repository,
    index: &Arc<crate::pack::PackIndex>,
    by_pack: &std::collections::HashMap<PackId, Vec<(ChunkId, crate::pack::PackedAt)>>,
    referenced: &HashSet<ChunkId>,
    loose: &HashSet<ChunkId>,
    pick: Vec<(PackId, ObjectMeta, u64)>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    if pick.is_empty() {
        return Ok(());
    }
    let store = repo.store().clone();
    let picked: HashSet<PackId> = pick.iter().map(|(p, ..)| *p).collect();
    // Referenced chunks with a copy outside the packs being rewritten need no new one.
    let mut elsewhere: HashSet<ChunkId> = loose.clone();
    for (pack, chunks) in by_pack {
        if !picked.contains(pack) {
            elsewhere.extend(chunks.iter().map(|(id, _)| *id));
        }
    }
    let packer = crate::pack::Packer::new(index.clone(), repo.index_cache());
    let max = repo.config().chunker_params.max_size as usize;
    let mut done = Vec::new();
    for (pack, meta, unreferenced) in pick {
        let copy: Vec<(ChunkId, crate::pack::PackedAt)> = by_pack
            .get(&pack)
            .map_or(&[][..], |v| v.as_slice())
            .iter()
            .filter(|(id, _)| referenced.contains(id) && !elsewhere.contains(id))
            .cloned()
            .collect();
        let live: u64 = copy.iter().map(|(_, at)| u64::from(at.length)).sum();
        let count = |report: &mut GcReport| {
            report.packs_repacked += 1;
            report.repack_bytes_written += live;
            report.repack_bytes_freed += meta.size.saturating_sub(live);
            report.pack_bytes_unreferenced -= unreferenced;
        };
        if opts.dry_run {
            count(report);
            continue;
        }
        let data = match store.get(&meta.key).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        // Every chunk to copy must open before any is copied: a damaged one stays where it is
        // (with its pack) for `check` to report, rather than be carried on or lost.
        let keys = repo.keys().clone();
        let (data, verdict) = crate::backup::blocking(move || {
            let mut opened = Vec::with_capacity(copy.len());
            for (id, at) in copy {
                let r = at.range();
                let Some(sealed) = data.get(r.start as usize..r.end as usize) else {
                    return (data, Err(format!("chunk {id} lies beyond the pack's end")));
                };
                let mut scratch = sealed.to_vec();
                match keys.open_in_place(crate::codec::ObjectType::Chunk, &id.0, &mut scratch, max)
                {
                    Ok(plain) => opened.push((id, at, plain.len() as u32)),
                    Err(e) => return (data, Err(format!("chunk {id}: {e}"))),
                }
            }
            (data, Ok(opened))
        })
        .await?;
        let copy = match verdict {
            Ok(c) => c,
            Err(why) => {
                report
                    .repack_skipped
                    .push(format!("{}: {why}; run `check --read-data`", meta.key));
                continue;
            }
        };
        for (id, at, plain) in copy {
            let r = at.range();
            if let Some(Some(full)) = packer.add(id, &data[r.start as usize..r.end as usize], plain)
            {
                packer.write(full, &*store, repo.keys()).await?;
            }
        }
        count(report);
        done.push((pack, meta));
    }
    if let Some(full) = packer.take() {
        packer.write(full, &*store, repo.keys()).await?;
    }
    // Copies are durable and indexed: now the old index (first, as always), then the pack.
    for (pack, meta) in done {
        store.delete(&pack.index_key()).await?;
        store.delete(&meta.key).await?;
    }
    repo.reload_packs().await?;
    Ok(())
}
