//! Repository check: every snapshot readable, every chunk it names present, and with
//! `read_data` every chunk decrypted and verified against its id.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use serde::Serialize;

use crate::content::reader::Verify;
use crate::content::{PackIndex, PackedAt};
use crate::error::{Error, Result};
use crate::id::{ChunkId, PackId, SnapshotId, id_in_key};
use crate::repository::Repository;

/// What to check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Download and verify every chunk, not only its presence.
    pub read_data: bool,
    pub concurrency: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            read_data: false,
            concurrency: crate::runtime::default_concurrency(),
        }
    }
}

/// One problem found, naming what it concerns.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkId>,
    pub message: String,
}

/// Result of a check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Every chunk was downloaded and verified (`--read-data`).
    pub read_data: bool,
    pub snapshots: usize,
    pub items: usize,
    /// Distinct chunks named by snapshots.
    pub chunks: usize,
    /// Chunks downloaded and verified (with `read_data`).
    pub chunks_read: usize,
    pub bytes_read: u64,
    /// Chunk objects no snapshot names (left by interrupted runs; removed by prune).
    pub unreferenced_chunks: usize,
    /// Pack objects, and those without an index (a run killed between the two; removed by
    /// prune).
    pub packs: usize,
    pub orphan_packs: usize,
    /// PostgreSQL WAL files in the archive (gaps and, with `read_data`, damage are problems).
    pub wal_files: usize,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Adds what this check found to its metrics (`lifeboat_check_last_*{repository}`).
    pub fn metrics(&self, m: &mut crate::metrics::Metrics, repository: &str) {
        let figures = [
            (
                "problems",
                "Problems the last check found.",
                self.problems.len() as f64,
            ),
            (
                "snapshots",
                "Snapshots the last check read.",
                self.snapshots as f64,
            ),
            (
                "chunks",
                "Distinct chunks the snapshots name.",
                self.chunks as f64,
            ),
            (
                "bytes_read",
                "Bytes the last check downloaded and verified.",
                self.bytes_read as f64,
            ),
            (
                "read_data",
                "1 if the last check read every chunk (--read-data).",
                f64::from(u8::from(self.read_data)),
            ),
        ];
        for (name, help, v) in figures {
            m.gauge(
                &format!("lifeboat_check_last_{name}"),
                help,
                &[("repository", repository)],
                v,
            );
        }
    }

    /// No problems found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The next step when something was found.
    pub fn hint(&self) -> Option<&'static str> {
        (!self.ok()).then_some(
            "restore an older snapshot that does not use the damaged objects, and take a fresh backup",
        )
    }

    /// Process exit code: 0, or [`crate::error::EXIT_INTEGRITY`] when there are problems.
    pub fn exit_code(&self) -> u8 {
        if self.ok() {
            0
        } else {
            crate::error::EXIT_INTEGRITY
        }
    }
}

/// Checks the repository.
pub async fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let mut problems = Vec::new();
    let snapshots = read_snapshots(repo, &mut problems).await?;
    // First user of each chunk: enough to name it in a message.
    let mut users: BTreeMap<ChunkId, (SnapshotId, String)> = BTreeMap::new();
    let mut items = 0;
    for s in &snapshots {
        for it in &s.items {
            items += 1;
            for c in it.all_chunks() {
                users.entry(*c).or_insert_with(|| (s.id, it.name.clone()));
            }
        }
    }
    let loose: HashSet<ChunkId> = repo
        .store()
        .list("chunks/")
        .await?
        .iter()
        .filter_map(|m| id_in_key(&m.key))
        .collect();
    // The store's copies, not the local cache (a damaged index in the store is a problem), and
    // installed as the repository's view: the reads below go the way a restore's go.
    let packs = repo.reload_packs_from_store().await?;
    let pack_objects: HashSet<PackId> = repo
        .store()
        .list("packs/")
        .await?
        .iter()
        .filter_map(|m| id_in_key(&m.key))
        .collect();
    let view = View::new(&packs, &pack_objects, &loose);
    problems.extend(view.index_problems(&packs));
    let mut present = Vec::new();
    for (chunk, (snapshot, item)) in &users {
        let copies = view.copies(chunk);
        if copies.is_empty() {
            problems.push(problem(Error::ChunkMissing {
                snapshot: *snapshot,
                item: item.clone(),
                chunk: *chunk,
                location: repo.location(),
            }));
        }
        present.extend(copies.into_iter().map(|at| (*chunk, at)));
    }
    let unreferenced_chunks = view
        .stored()
        .iter()
        .filter(|c| !users.contains_key(c))
        .count();
    if let Some(days) = repo.store().retention_days() {
        problems.extend(check_retention(repo, &packs, &snapshots, days, opts.concurrency).await?);
    }
    let (mut chunks_read, mut bytes_read) = (0, 0u64);
    if opts.read_data {
        let (n, bytes) = read_every_copy(repo, &users, present, opts, &mut problems).await;
        (chunks_read, bytes_read) = (n, bytes);
        problems.extend(check_catalogs(repo, &snapshots).await?);
    }
    let (wal_files, wal_problems) =
        crate::engines::postgres::wal::verify(repo, &snapshots, opts.read_data).await?;
    problems.extend(wal_problems.into_iter().map(|message| Problem {
        snapshot: None,
        item: None,
        chunk: None,
        message,
    }));
    Ok(CheckReport {
        read_data: opts.read_data,
        snapshots: snapshots.len(),
        items,
        chunks: users.len(),
        chunks_read,
        bytes_read,
        unreferenced_chunks,
        packs: pack_objects.len(),
        orphan_packs: view.orphans,
        wal_files,
        problems,
    })
}

/// Every manifest from the store (not the cache); one that does not open is a problem.
async fn read_snapshots(
    repo: &Repository,
    problems: &mut Vec<Problem>,
) -> Result<Vec<crate::manifest::Snapshot>> {
    let mut snapshots = Vec::new();
    for m in repo.store().list("snapshots/").await? {
        let Some(id) = id_in_key::<SnapshotId>(&m.key) else {
            continue;
        };
        match repo.load_snapshot_from_store(&id).await {
            Ok(s) => snapshots.push(s),
            Err(Error::NotFound { .. }) => {}
            Err(Error::SnapshotCorrupt { reason, .. }) => problems.push(Problem {
                snapshot: Some(id),
                item: None,
                chunk: None,
                message: crate::repository::DamagedSnapshot {
                    id,
                    stored: m.modified,
                    reason,
                }
                .to_string(),
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(snapshots)
}

/// Where each chunk can be read from, as a restore would find it: every pack copy whose pack
/// exists, and the loose object.
struct View<'a> {
    packs: &'a PackIndex,
    /// Every indexed pack's chunks (one copy of the index's lists, not one per question).
    indexed: HashMap<PackId, Vec<(ChunkId, PackedAt)>>,
    pack_objects: &'a HashSet<PackId>,
    loose: &'a HashSet<ChunkId>,
    orphans: usize,
}

impl<'a> View<'a> {
    fn new(
        packs: &'a PackIndex,
        pack_objects: &'a HashSet<PackId>,
        loose: &'a HashSet<ChunkId>,
    ) -> Self {
        let indexed = packs.by_pack();
        let damaged = packs.damaged_packs();
        let orphans = pack_objects
            .iter()
            .filter(|p| !indexed.contains_key(p) && !damaged.contains(p))
            .count();
        View {
            packs,
            indexed,
            pack_objects,
            loose,
            orphans,
        }
    }

    /// Copies of `chunk` (`None`: its loose object).
    fn copies(&self, chunk: &ChunkId) -> Vec<Option<PackedAt>> {
        let mut out: Vec<Option<PackedAt>> = self
            .packs
            .locations(chunk)
            .into_iter()
            .filter(|at| self.pack_objects.contains(&at.pack))
            .map(Some)
            .collect();
        if self.loose.contains(chunk) {
            out.push(None);
        }
        out
    }

    fn stored(&self) -> HashSet<ChunkId> {
        let mut stored = self.loose.clone();
        for (pack, chunks) in &self.indexed {
            if self.pack_objects.contains(pack) {
                stored.extend(chunks.iter().map(|(id, _)| *id));
            }
        }
        stored
    }

    /// Damaged indexes, and indexes whose pack is gone (a backup would reuse their chunks).
    fn index_problems(&self, packs: &PackIndex) -> Vec<Problem> {
        let mut out: Vec<Problem> = packs
            .damaged()
            .iter()
            .map(|d| Problem {
                snapshot: None,
                item: None,
                chunk: None,
                message: format!(
                    "index object {} cannot be opened ({}): the chunks of its pack count as missing, and prune keeps the pack; if no snapshot is missing chunks, delete the index and prune removes the pack",
                    d.key, d.reason
                ),
            })
            .collect();
        let mut dangling: Vec<(PackId, usize)> = self
            .indexed
            .iter()
            .filter(|(p, _)| !self.pack_objects.contains(p))
            .map(|(p, c)| (*p, c.len()))
            .collect();
        dangling.sort();
        out.extend(dangling.into_iter().map(|(p, n)| Problem {
            snapshot: None,
            item: None,
            chunk: None,
            message: format!(
                "index object {} lists {n} chunks of pack {}, which is missing from the store: backups would reuse them; `prune` removes the index",
                p.index_key(),
                p.object_key()
            ),
        }));
        out
    }
}

/// Reads and verifies every copy of every chunk (each copy on its own: GC keeps one of two
/// copies and may delete the other, so a damaged copy is a problem even while another opens).
/// In pack order, so that neighbours in a pack are one read (as in a restore).
async fn read_every_copy(
    repo: &Repository,
    users: &BTreeMap<ChunkId, (SnapshotId, String)>,
    mut copies: Vec<(ChunkId, Option<PackedAt>)>,
    opts: &CheckOptions,
    problems: &mut Vec<Problem>,
) -> (usize, u64) {
    copies.sort_by_key(|(c, at)| (at.map(|a| (a.pack, a.offset)), *c));
    let located: HashMap<(ChunkId, Option<PackId>), Option<PackedAt>> = copies
        .iter()
        .map(|(c, at)| ((*c, at.map(|a| a.pack)), *at))
        .collect();
    let located = &located;
    let mut reads = futures::stream::iter(crate::content::reader::group(copies))
        .map(|f| async move {
            let ids = f.ids();
            let pack = match &f {
                crate::content::reader::Fetch::Packed { pack, .. } => Some(*pack),
                crate::content::reader::Fetch::Loose(_) => None,
            };
            let (snapshot, item) = users[&ids[0]].clone();
            match crate::content::reader::fetch_exact(repo, snapshot, &item, f, Verify::Id).await {
                Ok(plains) => plains
                    .into_iter()
                    .map(|(plain, _)| {
                        let n = plain.len() as u64;
                        crate::buffer::give(plain);
                        Ok(n)
                    })
                    .collect::<Vec<Result<u64>>>(),
                // Chunk by chunk, so each problem names its chunk, its copy and a user of it.
                Err(_) => {
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        let (snapshot, item) = &users[&id];
                        let at = located[&(id, pack)];
                        let one = crate::content::reader::group([(id, at)])
                            .pop()
                            .expect("one");
                        let r = crate::content::reader::fetch_exact(
                            repo,
                            *snapshot,
                            item,
                            one,
                            Verify::Id,
                        )
                        .await;
                        out.push(match r {
                            Ok(mut p) => Ok(p.pop().map_or(0, |(p, _)| p.len() as u64)),
                            Err(e) => Err(copy_problem(e, *snapshot, item, id, at)),
                        });
                    }
                    out
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let (mut n, mut bytes) = (0, 0u64);
    while let Some(results) = reads.next().await {
        for r in results {
            match r {
                Ok(b) => {
                    n += 1;
                    bytes += b;
                }
                Err(e) => problems.push(problem(e)),
            }
        }
    }
    (n, bytes)
}

/// A copy that did not read or open, named with where it is.
fn copy_problem(
    e: Error,
    snapshot: SnapshotId,
    item: &str,
    chunk: ChunkId,
    at: Option<PackedAt>,
) -> Error {
    let place = match at {
        Some(a) => format!("its copy in pack {} at {}", a.pack, a.offset),
        None => "its loose object".to_string(),
    };
    match e {
        Error::NotFound { .. } => Error::ChunkCorrupt {
            snapshot,
            item: item.to_string(),
            chunk,
            reason: format!("{place} disappeared during the check"),
        },
        Error::ChunkCorrupt { reason, .. } => Error::ChunkCorrupt {
            snapshot,
            item: item.to_string(),
            chunk,
            reason: if reason.starts_with("its ") {
                reason
            } else {
                format!("{place}: {reason}")
            },
        },
        other => other,
    }
}

/// Every object of a live snapshot must be locked until the snapshot's time plus `days`.
async fn check_retention(
    repo: &Repository,
    packs: &PackIndex,
    snapshots: &[crate::manifest::Snapshot],
    days: u32,
    concurrency: usize,
) -> Result<Vec<Problem>> {
    let mut need: BTreeMap<ChunkId, (chrono::DateTime<chrono::Utc>, SnapshotId, String)> =
        BTreeMap::new();
    for s in snapshots {
        let until = s.time + chrono::Duration::days(i64::from(days));
        for it in &s.items {
            for c in it.all_chunks() {
                let e = need.entry(*c).or_insert((until, s.id, it.name.clone()));
                if until > e.0 {
                    *e = (until, s.id, it.name.clone());
                }
            }
        }
    }
    // An hour of slack for clock differences between this host and the store.
    let slack = chrono::Duration::hours(1);
    let mut out = Vec::new();
    // One lookup per object: a pack holds many chunks, and must be locked for the longest.
    let mut per_object: BTreeMap<
        String,
        (ChunkId, chrono::DateTime<chrono::Utc>, SnapshotId, String),
    > = BTreeMap::new();
    for (chunk, (until, snap, item)) in need {
        let keys = match packs.get(&chunk) {
            Some(at) => vec![at.pack.object_key(), at.pack.index_key()],
            None => vec![chunk.object_key()],
        };
        for key in keys {
            let e = per_object
                .entry(key)
                .or_insert_with(|| (chunk, until, snap, item.clone()));
            if until > e.1 {
                *e = (chunk, until, snap, item.clone());
            }
        }
    }
    let mut lookups = futures::stream::iter(per_object)
        .map(|(key, (chunk, until, snap, item))| async move {
            let have = repo.store().retention_until(&key).await;
            (key, chunk, until, snap, item, have)
        })
        .buffer_unordered(concurrency.max(4) * 2);
    while let Some((key, chunk, until, snap, item, have)) = lookups.next().await {
        let message = match have? {
            None => format!(
                "{key} (chunk {chunk} of item {item} in snapshot {snap}) has no Object Lock retention"
            ),
            Some(h) if h + slack < until => format!(
                "{key} (chunk {chunk} of item {item} in snapshot {snap}) is locked until {h}, short of {until}"
            ),
            Some(_) => continue,
        };
        out.push(Problem {
            snapshot: Some(snap),
            item: Some(item),
            chunk: Some(chunk),
            message,
        });
    }
    Ok(out)
}

/// Every file catalog decodes and fits its item (chunk count, stream length, entry ranges in
/// order): what `ls`, `dump` and `--include` would trip over. A missing or damaged chunk of a
/// catalog is reported by the chunk reads already.
async fn check_catalogs(
    repo: &Repository,
    snapshots: &[crate::manifest::Snapshot],
) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for s in snapshots {
        for it in s.items.iter().filter(|i| i.catalog.is_some()) {
            let message = match crate::commands::browse::load_catalog(repo, s.id, it).await {
                Ok(c) => catalog_misfit(&c, it),
                Err(e) if crate::commands::browse::is_damage(&e) => None,
                Err(Error::SnapshotCorrupt { reason, .. }) => Some(reason),
                Err(e) => return Err(e),
            };
            out.extend(message.map(|message| Problem {
                snapshot: Some(s.id),
                item: Some(it.name.clone()),
                chunk: None,
                message,
            }));
        }
    }
    Ok(out)
}

/// Why a decoded catalog does not describe its item, if it does not.
fn catalog_misfit(c: &crate::catalog::Catalog, it: &crate::manifest::Item) -> Option<String> {
    let head = it.head_bytes().map_or(0, |h| h.len() as u64);
    let end = head + c.stream_len();
    if end != it.size {
        return Some(format!(
            "the file catalog of item {} covers {end} bytes of its {}",
            it.name, it.size
        ));
    }
    let mut at = 0;
    for e in &c.entries {
        if e.at[0] < at || e.at[1] < e.at[0] || e.at[1] > end {
            return Some(format!(
                "the file catalog of item {} places {} at {:?}, out of order or past the stream",
                it.name, e.path, e.at
            ));
        }
        at = e.at[1];
    }
    None
}

fn problem(e: Error) -> Problem {
    let (snapshot, item, chunk) = match &e {
        Error::ChunkMissing {
            snapshot,
            item,
            chunk,
            ..
        }
        | Error::ChunkCorrupt {
            snapshot,
            item,
            chunk,
            ..
        } => (Some(*snapshot), Some(item.clone()), Some(*chunk)),
        _ => (None, None, None),
    };
    Problem {
        snapshot,
        item,
        chunk,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn a_catalog_that_does_not_fit_its_item_is_a_problem() {
        let item: crate::manifest::Item = serde_json::from_value(serde_json::json!({
            "name": "v", "kind": "volume", "format": "tar", "size": 3000,
            "sha256": "", "chunks": [], "started": "2026-01-01T00:00:00Z",
            "finished": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let entry = |path: &str, at: [u64; 2]| {
            serde_json::json!({"path": path, "kind": "file", "mode": 420, "uid": 0, "gid": 0,
                "mtime_ns": 0, "at": at})
        };
        let catalog = |lens: &[u64], entries: Vec<serde_json::Value>| -> Catalog {
            serde_json::from_value(
                serde_json::json!({"version": 1, "chunk_lens": lens, "entries": entries}),
            )
            .unwrap()
        };
        let good = catalog(
            &[1000, 2000],
            vec![entry("a", [0, 1024]), entry("b", [1024, 2048])],
        );
        assert_eq!(catalog_misfit(&good, &item), None);
        let short = catalog(&[1000], vec![entry("a", [0, 512])]);
        assert!(
            catalog_misfit(&short, &item)
                .unwrap()
                .contains("covers 1000 bytes of its 3000")
        );
        let past = catalog(
            &[1000, 2000],
            vec![entry("a", [0, 1024]), entry("b", [1024, 4096])],
        );
        assert!(catalog_misfit(&past, &item).unwrap().contains("places b"));
        let order = catalog(
            &[1000, 2000],
            vec![entry("a", [512, 1024]), entry("b", [0, 512])],
        );
        assert!(
            catalog_misfit(&order, &item)
                .unwrap()
                .contains("out of order")
        );
    }
}
