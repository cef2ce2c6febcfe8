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

mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::ChunkId;
pub use crate::markers::{HEARTBEAT, RunMarker, STALE_AFTER};
use crate::markers::{INCOMPLETE_MIN_AGE, markers, spawn_heartbeat};
use crate::repository::Repository;
use crate::store::{ObjectMeta, PutMode, Store};

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
    /// Objects that could not be read and were therefore kept, with why: snapshot manifests
    /// (while one is damaged GC deletes nothing), packs whose index is damaged. Run `check`.
    pub damaged: Vec<String>,
    pub dry_run: bool,
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
    let result = collect_marked(repo, opts, &gc_key, &mut report).await;
    if let Some(h) = heartbeat {
        h.abort();
        let _ = h.await;
        let _ = store.delete(&gc_key).await;
    }
    result.map(|()| report)
}

async fn collect_marked(
    repo: &Repository,
    opts: &GcOptions,
    own_marker: &str,
    report: &mut GcReport,
) -> Result<()> {
    let store = repo.store().clone();
    let Some((snapshots, stale)) = may_collect(repo, opts, own_marker, report).await? else {
        return Ok(());
    };
    let referenced: HashSet<ChunkId> = Repository::chunks_of(&snapshots);
    let chunks = store.list("chunks/").await?;
    // Indexes before packs: a pack is written before its index, so a listed index's pack is
    // in the pack listing that follows.
    let index = repo.reload_packs().await?;
    let pack_objects = store.list("packs/").await?;
    let plan = plan::plan(&plan::Inventory {
        referenced: &referenced,
        loose: &chunks,
        packs: &pack_objects,
        index: &index,
        grace: opts.grace,
        max_unused: opts.max_unused,
    });
    report.chunks_total = chunks.len();
    report.chunks_referenced = plan.loose_referenced;
    report.chunks_in_grace = plan.loose_in_grace;
    report.packs_total = pack_objects.len();
    report.pack_bytes_unreferenced = plan.dead_kept;
    report.damaged.extend(plan.unreadable.iter().cloned());
    report.damaged.extend(
        index
            .damaged()
            .iter()
            .filter(|d| d.pack.is_none())
            .map(|d| format!("{} kept: {}", d.key, d.reason)),
    );
    // A backup that started while we listed may rely on any of these: check again.
    let (live, _) = markers(&*store, "markers/run-", opts.stale_after).await?;
    if let Some(m) = live.first() {
        report.deferred = Some(format!(
            "a backup started during collection ({}); nothing deleted",
            m.key
        ));
        return Ok(());
    }
    apply(repo, &index, plan, stale, opts, report).await
}

/// Whether this GC may collect now: not while another GC or a backup runs, nor while a
/// manifest does not open (the report says why). Returns the snapshots and the dead
/// processes' markers to remove.
async fn may_collect(
    repo: &Repository,
    opts: &GcOptions,
    own_marker: &str,
    report: &mut GcReport,
) -> Result<Option<(Vec<crate::manifest::Snapshot>, Vec<ObjectMeta>)>> {
    let store = repo.store();
    let (other, stale_gcs) = other_gc(&**store, opts, own_marker).await?;
    if let Some(why) = other {
        report.deferred = Some(why);
        return Ok(None);
    }
    let (live, mut stale) = markers(&**store, "markers/run-", opts.stale_after).await?;
    stale.extend(stale_gcs);
    if let Some(m) = live.first() {
        report.deferred = Some(format!(
            "a backup is running ({}); nothing deleted, run prune again later",
            m.key
        ));
        return Ok(None);
    }
    let listing = repo.snapshot_listing().await?;
    if !listing.damaged.is_empty() {
        // Its chunks are unknown: any of them could be one that looks unreferenced.
        report.damaged = listing.damaged.iter().map(|d| d.to_string()).collect();
        report.deferred = Some(format!(
            "{} snapshot manifest(s) cannot be opened, so which chunks they name is unknown; nothing deleted",
            listing.damaged.len()
        ));
        return Ok(None);
    }
    Ok(Some((listing.snapshots, stale)))
}

/// Carries out a plan: deletes, repacks, removes dead markers and old partial writes.
async fn apply(
    repo: &Repository,
    index: &Arc<crate::content::PackIndex>,
    plan: plan::Plan,
    stale: Vec<ObjectMeta>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    let store = repo.store();
    delete_loose(&**store, plan.loose_delete, opts, report).await?;
    delete_packs(&**store, plan.packs_delete, opts, report).await?;
    for key in plan.dangling {
        if !opts.dry_run {
            store.delete(&key).await?;
        }
        report.dangling_indexes_removed += 1;
    }
    // Object Lock: the old packs could not be deleted before their retention ends.
    if store.retention_days().is_none() {
        repack(repo, index, plan.repack, opts, report).await?;
    } else {
        report.pack_bytes_unreferenced += plan.repack.iter().map(|r| r.dead).sum::<u64>();
    }
    for m in stale {
        if !opts.dry_run {
            store.delete(&m.key).await?;
        }
        report.stale_markers_removed += 1;
    }
    // Never younger than an hour whatever the grace: a temp file that young may be a live
    // put's (with `--grace 0s`, a starting backup lost its marker to this sweep).
    (report.incomplete_removed, report.incomplete_bytes) = store
        .sweep_incomplete(opts.grace.max(INCOMPLETE_MIN_AGE), opts.dry_run)
        .await?;
    Ok(())
}

/// Another live GC, if one runs: two at once could each see the other's half-done repack as
/// garbage (a new pack whose index is not written yet looks like an orphan). Both write their
/// marker before looking, so of two that start together at least one defers.
/// Also returns dead GCs' markers (not this one's), for removal.
async fn other_gc(
    store: &dyn Store,
    opts: &GcOptions,
    own: &str,
) -> Result<(Option<String>, Vec<ObjectMeta>)> {
    let (live, mut stale) = markers(store, "markers/gc-", opts.stale_after).await?;
    stale.retain(|m| m.key != own);
    if opts.dry_run {
        return Ok((None, stale));
    }
    let other = live.iter().find(|m| m.key != own).map(|m| {
        format!(
            "another garbage collection is running ({}); nothing deleted, run prune again later",
            m.key
        )
    });
    Ok((other, stale))
}

async fn delete_loose(
    store: &dyn Store,
    doomed: Vec<ObjectMeta>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    for m in doomed {
        if opts.dry_run || delete_unless_retained(store, &[&m.key], report).await? {
            report.chunks_deleted += 1;
            report.bytes_deleted += m.size;
        }
    }
    Ok(())
}

/// Index first, then pack: an index must never outlive its pack, or backups would reuse
/// chunks that are gone.
async fn delete_packs(
    store: &dyn Store,
    doomed: Vec<(Option<String>, ObjectMeta)>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    for (index_key, m) in doomed {
        let keys: Vec<&str> = index_key
            .iter()
            .map(String::as_str)
            .chain([&*m.key])
            .collect();
        if opts.dry_run || delete_unless_retained(store, &keys, report).await? {
            report.packs_deleted += 1;
            report.pack_bytes_deleted += m.size;
        }
    }
    Ok(())
}

/// Deletes `keys` in order; false (and the key recorded) if the store refused one because of
/// retention (Object Lock), which leaves the rest.
async fn delete_unless_retained(
    store: &dyn Store,
    keys: &[&str],
    report: &mut GcReport,
) -> Result<bool> {
    for k in keys {
        match store.delete(k).await {
            Ok(()) => {}
            Err(Error::Retained { key, .. }) => {
                report.skipped_retained.push(key);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Copies the chunks each picked pack keeps into new packs (each verified first), then
/// deletes the old packs.
async fn repack(
    repo: &Repository,
    index: &Arc<crate::content::PackIndex>,
    pick: Vec<plan::Repack>,
    opts: &GcOptions,
    report: &mut GcReport,
) -> Result<()> {
    if pick.is_empty() {
        return Ok(());
    }
    let store = repo.store().clone();
    let packer = crate::content::Packer::new(index.clone(), repo.index_cache());
    let mut done = Vec::new();
    for r in pick {
        let live: u64 = r.copy.iter().map(|(_, at)| u64::from(at.length)).sum();
        let count = |report: &mut GcReport| {
            report.packs_repacked += 1;
            report.repack_bytes_written += live;
            report.repack_bytes_freed += r.meta.size.saturating_sub(live);
        };
        if opts.dry_run {
            count(report);
            continue;
        }
        let data = match store.get(&r.meta.key).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let copy = match verify_copies(repo, data, r.copy.clone()).await? {
            Ok(c) => c,
            Err(why) => {
                report.pack_bytes_unreferenced += r.dead;
                report
                    .repack_skipped
                    .push(format!("{}: {why}; run `check --read-data`", r.meta.key));
                continue;
            }
        };
        for (id, sealed, plain) in copy {
            if let Some(Some(full)) = packer.add(id, &sealed, plain) {
                packer.write(full, &*store, repo.keys()).await?;
            }
        }
        count(report);
        done.push(r);
    }
    if let Some(full) = packer.take() {
        packer.write(full, &*store, repo.keys()).await?;
    }
    // Copies are durable and indexed: now the old index (first, as always), then the pack.
    for r in done {
        store.delete(&r.pack.index_key()).await?;
        store.delete(&r.meta.key).await?;
    }
    repo.reload_packs().await?;
    Ok(())
}

/// Every chunk to copy must open before any is copied: a damaged one stays where it is (with
/// its pack) for `check` to report, rather than be carried on or lost.
async fn verify_copies(
    repo: &Repository,
    data: Vec<u8>,
    copy: Vec<(ChunkId, crate::content::PackedAt)>,
) -> Result<std::result::Result<Vec<(ChunkId, Vec<u8>, u32)>, String>> {
    let keys = repo.keys().clone();
    let max = repo.config().chunker_params.max_size as usize;
    crate::runtime::blocking(move || {
        let mut opened = Vec::with_capacity(copy.len());
        for (id, at) in copy {
            let r = at.range();
            let Some(sealed) = data.get(r.start as usize..r.end as usize) else {
                return Err(format!("chunk {id} lies beyond the pack's end"));
            };
            let mut scratch = sealed.to_vec();
            match keys.open_in_place(crate::codec::ObjectType::Chunk, &id.0, &mut scratch, max) {
                Ok(plain) => opened.push((id, sealed.to_vec(), plain.len() as u32)),
                Err(e) => return Err(format!("chunk {id}: {e}")),
            }
        }
        Ok(opened)
    })
    .await
}
