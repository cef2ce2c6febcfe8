//! Browsing volume snapshots through their file catalogs: `ls`, `find` across snapshots,
//! `diff`, `dump`, and the tar stream of chosen entries that `restore --include` unpacks —
//! each fetching only the chunks that hold what it shows.

use std::collections::BTreeSet;
use std::ops::Range;

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::catalog::{Catalog, Entry, EntryKind};
use crate::content::reader::{self as fetch, Verify};
use crate::engines::volume::glob::Excludes;
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::manifest::{Item, ItemKind, Snapshot};
use crate::repository::Repository;

/// Reads, proves and decodes an item's catalog.
pub async fn load_catalog(repo: &Repository, snapshot: SnapshotId, item: &Item) -> Result<Catalog> {
    let Some(cref) = &item.catalog else {
        let why = if item.kind == ItemKind::Volume {
            "written before file catalogs"
        } else {
            "only volume items have one"
        };
        return Err(Error::NoCatalog {
            snapshot,
            item: item.name.clone(),
            why: why.into(),
        });
    };
    let corrupt = |reason: String| Error::SnapshotCorrupt { snapshot, reason };
    let mut bytes = Vec::with_capacity(cref.size as usize);
    for f in fetch::plan(&*repo.packs().await?, &cref.chunks) {
        for (chunk, _) in fetch::fetch(repo, snapshot, &item.name, f, Verify::Id).await? {
            bytes.extend_from_slice(&chunk);
        }
    }
    if bytes.len() as u64 != cref.size || hex::encode(Sha256::digest(&bytes)) != cref.sha256 {
        return Err(corrupt(format!(
            "the file catalog of item {} does not match its record",
            item.name
        )));
    }
    let c = Catalog::decode(&bytes)
        .map_err(|e| corrupt(format!("file catalog of item {}: {e}", item.name)))?;
    if c.chunk_lens.len() != item.chunks.len() {
        return Err(corrupt(format!(
            "the file catalog of item {} names {} chunks, the item {}",
            item.name,
            c.chunk_lens.len(),
            item.chunks.len()
        )));
    }
    Ok(c)
}

/// The index of the entry at `path` of a catalog, or the error naming it.
pub fn entry(catalog: &Catalog, snapshot: SnapshotId, item: &Item, path: &str) -> Result<usize> {
    catalog.find(path).ok_or_else(|| Error::EntryNotFound {
        snapshot,
        item: item.name.clone(),
        path: path.to_string(),
    })
}

/// Whether an error is damage of the repository's data (a chunk missing, or not the chunk
/// it claims to be) rather than a failure to reach it: what a partial restore routes around.
pub fn is_damage(e: &Error) -> bool {
    matches!(e, Error::ChunkMissing { .. } | Error::ChunkCorrupt { .. })
}

/// Indices of the item's chunks that are missing or damaged: every chunk is fetched and proved
/// (as `check --read-data` does); a failure to reach the store is an error, not damage.
pub async fn damaged_chunks(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &Item,
    concurrency: usize,
) -> Result<BTreeSet<usize>> {
    let ids = item.chunks.clone();
    let results: Vec<(ChunkId, Result<()>)> =
        futures::stream::iter(ids.iter().copied().collect::<BTreeSet<_>>())
            .map(|id| {
                let (repo, name) = (repo.clone(), item.name.clone());
                async move {
                    let r = fetch::fetch_chunk_verified(&repo, snapshot, &name, id, Verify::Id)
                        .await
                        .map(|(c, _)| crate::buffer::give(c));
                    (id, r)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut bad = BTreeSet::new();
    for (id, r) in results {
        match r {
            Ok(()) => {}
            Err(e) if is_damage(&e) => {
                bad.extend(
                    ids.iter()
                        .enumerate()
                        .filter(|(_, c)| **c == id)
                        .map(|(i, _)| i),
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(bad)
}

/// What writing chosen entries took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SelectionReport {
    /// Entries chosen.
    pub entries: usize,
    /// Entries written: the chosen ones and the directories and link targets they need.
    pub entries_written: usize,
    /// File data bytes among them.
    pub file_bytes: u64,
    /// Tar stream bytes written.
    pub stream_bytes: u64,
    /// Chunks fetched, of the item's.
    pub chunks_fetched: usize,
    pub chunks_total: usize,
    /// Object bytes the store read from the command's start (catalog and chunks; items
    /// restored at the same time count too, the counter is the store's).
    pub bytes_fetched: u64,
}

/// Writes the entries `chosen` (indices into `catalog`, in stream order) as a tar stream to
/// `w`, ended as an archive, fetching only their chunks, each proved by its keyed id. The
/// caller fills in `bytes_fetched` (it knows what it read before: the catalog).
pub async fn write_entries(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &Item,
    catalog: &Catalog,
    chosen: &[usize],
    w: &mut (dyn AsyncWrite + Send + Unpin),
    concurrency: usize,
) -> Result<SelectionReport> {
    let ranges = catalog.ranges(chosen);
    let head = item
        .head_bytes()
        .map_err(|reason| Error::SnapshotCorrupt { snapshot, reason })?;
    let wanted = catalog.chunks_for(&ranges, head.len() as u64);
    let ids: Vec<_> = wanted.iter().map(|(i, _)| item.chunks[*i]).collect();
    let sink_err = |e: std::io::Error| Error::Sink {
        item: item.name.clone(),
        target: "restore target".into(),
        detail: format!("write failed: {e}"),
    };
    let mut out = RangeWriter::new(&ranges);
    out.write(0, &head, w).await.map_err(sink_err)?;
    let reads = fetch::plan(&*repo.packs().await?, &ids);
    let mut fetches = futures::stream::iter(reads)
        .map(|f| {
            let (repo, name) = (repo.clone(), item.name.clone());
            tokio::spawn(async move { fetch::fetch(&repo, snapshot, &name, f, Verify::Id).await })
        })
        .buffered(concurrency.max(1));
    let mut at = wanted.iter();
    while let Some(read) = fetches.next().await {
        let read = read.map_err(|e| Error::io("fetch task", std::io::Error::other(e)))??;
        for (chunk, _) in read {
            let (i, offset) = at.next().expect("one read result per wanted chunk");
            if chunk.len() as u64 != catalog.chunk_lens[*i] {
                return Err(Error::SnapshotCorrupt {
                    snapshot,
                    reason: format!(
                        "chunk {i} of item {} has another length than its catalog says",
                        item.name
                    ),
                });
            }
            out.write(*offset, &chunk, w).await.map_err(sink_err)?;
            crate::buffer::give(chunk);
        }
    }
    // The end-of-archive marker: two zero blocks.
    w.write_all(&[0u8; 1024]).await.map_err(sink_err)?;
    w.flush().await.map_err(sink_err)?;
    Ok(SelectionReport {
        entries: chosen.len(),
        entries_written: chosen.len(),
        file_bytes: chosen.iter().map(|&i| catalog.entries[i].size).sum(),
        stream_bytes: out.written + 1024,
        chunks_fetched: wanted.len(),
        chunks_total: item.chunks.len(),
        bytes_fetched: 0,
    })
}

/// Writes the parts of stream bytes that fall in the wanted ranges.
struct RangeWriter<'a> {
    ranges: &'a [Range<u64>],
    next: usize,
    written: u64,
}

impl<'a> RangeWriter<'a> {
    fn new(ranges: &'a [Range<u64>]) -> Self {
        RangeWriter {
            ranges,
            next: 0,
            written: 0,
        }
    }

    /// `bytes` lie at `offset` of the stream; chunks come in stream order.
    async fn write(
        &mut self,
        offset: u64,
        bytes: &[u8],
        w: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> std::io::Result<()> {
        let end = offset + bytes.len() as u64;
        while let Some(r) = self.ranges.get(self.next) {
            if r.start >= end {
                break;
            }
            let a = r.start.max(offset);
            let b = r.end.min(end);
            if a < b {
                w.write_all(&bytes[(a - offset) as usize..(b - offset) as usize])
                    .await?;
                self.written += b - a;
            }
            if r.end > end {
                break;
            }
            self.next += 1;
        }
        Ok(())
    }
}

/// `dump`: one file's data, or a directory (with everything below it) as a tar stream.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub path: String,
    pub kind: EntryKind,
    #[serde(flatten)]
    pub selection: SelectionReport,
}

/// Writes the entry at `path` of a volume item to `w`: a file's bytes, a directory's tree as
/// tar. A hard link dumps the file it names.
pub async fn dump(
    repo: &Repository,
    snapshot: &Snapshot,
    item_name: &str,
    path: &str,
    w: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<DumpReport> {
    let read_before = repo.store().bytes_read();
    let item = snapshot.require(item_name)?;
    let catalog = load_catalog(repo, snapshot.id, item).await?;
    let mut i = entry(&catalog, snapshot.id, item, path)?;
    if catalog.entries[i].kind == EntryKind::Hardlink {
        let target = catalog.entries[i].link.clone().unwrap_or_default();
        i = entry(&catalog, snapshot.id, item, &target)?;
    }
    let e = catalog.entries[i].clone();
    let mut selection = match e.kind {
        EntryKind::Dir => {
            let mut chosen = vec![i];
            chosen.extend(catalog.under(&e.path, true));
            write_entries(repo, snapshot.id, item, &catalog, &chosen, w, 8).await?
        }
        EntryKind::File => dump_file(repo, snapshot.id, item, &catalog, i, w).await?,
        _ => {
            return Err(Error::Usage(format!(
                "{path} in item {} is a {:?}, not a file or directory: nothing to dump",
                item.name, e.kind
            )));
        }
    };
    selection.bytes_fetched = repo.store().bytes_read() - read_before;
    Ok(DumpReport {
        path: e.path,
        kind: e.kind,
        selection,
    })
}

/// One file entry's data: its tar entry is written through a tar reader on a blocking thread,
/// whose data output is copied to `w` as it comes (bounded memory for any file size).
async fn dump_file(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &Item,
    catalog: &Catalog,
    i: usize,
    w: &mut (dyn AsyncWrite + Send + Unpin),
) -> Result<SelectionReport> {
    let (mut tar_in, tar_out) = tokio::io::duplex(1 << 20);
    let (data_in, mut data_out) = tokio::io::duplex(1 << 20);
    let name = item.name.clone();
    let extract = tokio::task::spawn_blocking(move || {
        let r =
            std::io::BufReader::with_capacity(1 << 20, tokio_util::io::SyncIoBridge::new(tar_out));
        let mut out = tokio_util::io::SyncIoBridge::new(data_in);
        let mut archive = tar::Archive::new(r);
        let fail = |e: std::io::Error| Error::Sink {
            item: name.clone(),
            target: "standard output".into(),
            detail: format!("reading the file's tar entry: {e}"),
        };
        let mut found = false;
        for entry in archive.entries().map_err(fail)? {
            let mut entry = entry.map_err(fail)?;
            if !found && entry.header().entry_type().is_file() {
                std::io::copy(&mut entry, &mut out).map_err(fail)?;
                std::io::Write::flush(&mut out).map_err(fail)?;
                found = true;
            }
        }
        drop(out);
        // Read the feed to its end, so it never writes into a closed pipe.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(fail)?;
        if found {
            Ok(())
        } else {
            Err(fail(std::io::Error::other("no file entry in the stream")))
        }
    });
    let feed = async {
        let r = write_entries(repo, snapshot, item, catalog, &[i], &mut tar_in, 8).await;
        drop(tar_in);
        r
    };
    let pump = tokio::io::copy(&mut data_out, w);
    let (fed, pumped) = tokio::join!(feed, pump);
    let extracted = extract
        .await
        .map_err(|e| Error::io("tar reader task", std::io::Error::other(e)))?;
    extracted?;
    pumped.map_err(|e| Error::Sink {
        item: item.name.clone(),
        target: "standard output".into(),
        detail: format!("write failed: {e}"),
    })?;
    fed
}

/// One snapshot's entry matching a `find` pattern.
#[derive(Debug, Clone, Serialize)]
pub struct FindHit {
    pub snapshot: SnapshotId,
    pub time: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub item: String,
    pub entry: Entry,
}

/// What `find` saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FindReport {
    pub hits: Vec<FindHit>,
    pub snapshots_searched: usize,
    /// Volume items without a catalog (written before catalogs): not searched.
    pub without_catalog: Vec<String>,
}

/// Entries matching `pattern` (a glob as for excludes: without `/` a name at any depth, with
/// `/` a path) in the volume items of `snapshots` (only those named in `items`, if any).
pub async fn find(
    repo: &Repository,
    snapshots: &[Snapshot],
    pattern: &str,
    items: &[String],
) -> Result<FindReport> {
    let m = Excludes::new(&[pattern]);
    let mut report = FindReport {
        snapshots_searched: snapshots.len(),
        ..FindReport::default()
    };
    let mut last: Option<(String, Catalog)> = None;
    for s in snapshots {
        let volumes = s.items.iter().filter(|i| i.kind == ItemKind::Volume);
        for item in volumes.filter(|i| items.is_empty() || items.contains(&i.name)) {
            if item.catalog.is_none() {
                report
                    .without_catalog
                    .push(format!("{} {}", s.id, item.name));
                continue;
            }
            // Nightly snapshots of a quiet volume share one catalog: decoded once.
            let sha = item.catalog.as_ref().map(|c| c.sha256.clone());
            if last.as_ref().map(|(k, _)| k) != sha.as_ref() {
                last = sha.zip(Some(load_catalog(repo, s.id, item).await?));
            }
            let Some((_, c)) = &last else { continue };
            for e in c.entries.iter().filter(|e| e.path != ".") {
                if m.is_excluded(&e.path, e.name()) {
                    report.hits.push(FindHit {
                        snapshot: s.id,
                        time: s.time,
                        host: s.host.clone(),
                        item: item.name.clone(),
                        entry: e.clone(),
                    });
                }
            }
        }
    }
    Ok(report)
}

/// How an entry differs between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    /// Content or kind: size, mtime, type or link target.
    Modified,
    /// Only mode or owner.
    Metadata,
}

impl Change {
    /// restic's one-letter marks.
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::Metadata => 'U',
        }
    }
}

/// One difference.
#[derive(Debug, Clone, Serialize)]
pub struct DiffEntry {
    pub item: String,
    pub path: String,
    pub change: Change,
}

/// What `diff` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    pub changes: Vec<DiffEntry>,
    /// Volume items only one snapshot has (compared as all added or removed).
    pub items_only_in_one: Vec<String>,
}

/// The entries added, removed and changed from snapshot `a` to `b`, per volume item.
pub async fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot) -> Result<DiffReport> {
    let mut report = DiffReport::default();
    let mut names: Vec<&str> = a
        .items
        .iter()
        .chain(&b.items)
        .filter(|i| i.kind == ItemKind::Volume)
        .map(|i| i.name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let load = |s: &Snapshot| {
            let item = s.item(name).cloned();
            let id = s.id;
            async move {
                match item {
                    Some(i) => load_catalog(repo, id, &i).await.map(Some),
                    None => Ok(None),
                }
            }
        };
        let (ca, cb) = (load(a).await?, load(b).await?);
        if ca.is_none() || cb.is_none() {
            report.items_only_in_one.push(name.to_string());
        }
        let empty = Vec::new();
        let ea = ca.as_ref().map_or(&empty, |c| &c.entries);
        let eb = cb.as_ref().map_or(&empty, |c| &c.entries);
        report.changes.extend(diff_entries(name, ea, eb));
    }
    Ok(report)
}

fn diff_entries(item: &str, a: &[Entry], b: &[Entry]) -> Vec<DiffEntry> {
    use std::collections::BTreeMap;
    let ma: BTreeMap<&str, &Entry> = a.iter().map(|e| (e.path.as_str(), e)).collect();
    let mb: BTreeMap<&str, &Entry> = b.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut out = Vec::new();
    let mut push = |path: &str, change| {
        out.push(DiffEntry {
            item: item.to_string(),
            path: path.to_string(),
            change,
        })
    };
    for (p, ea) in &ma {
        match mb.get(p) {
            None => push(p, Change::Removed),
            // A directory's mtime moves with any change inside it: that change is listed.
            Some(eb) if ea.kind == EntryKind::Dir && eb.kind == EntryKind::Dir => {
                if ea.meta_differs(eb) {
                    push(p, Change::Metadata)
                }
            }
            Some(eb) if ea.content_differs(eb) => push(p, Change::Modified),
            Some(eb) if ea.meta_differs(eb) => push(p, Change::Metadata),
            Some(_) => {}
        }
    }
    for p in mb.keys().filter(|p| !ma.contains_key(*p)) {
        push(p, Change::Added);
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_wanted_ranges_are_written_across_chunk_edges() {
        let stream: Vec<u8> = (0..100u8).collect();
        let ranges = [5..12, 12..15, 40..42, 95..100];
        let mut w = RangeWriter::new(&ranges);
        let mut out = Vec::new();
        for (off, part) in [
            (0u64, &stream[..10]),
            (10, &stream[10..41]),
            (41, &stream[41..]),
        ] {
            w.write(off, part, &mut out).await.unwrap();
        }
        let want: Vec<u8> = (5..15).chain(40..42).chain(95..100).collect();
        assert_eq!(out, want);
        assert_eq!(w.written, want.len() as u64);
    }

    #[test]
    fn diff_names_added_removed_modified_and_metadata_changes() {
        let e = |p: &str, size, mode| Entry {
            path: p.into(),
            path_bytes: None,
            kind: EntryKind::File,
            size,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            link: None,
            at: [0, 0],
        };
        let a = [
            e("gone", 1, 0o644),
            e("same", 1, 0o644),
            e("grew", 1, 0o644),
            e("chmod", 1, 0o644),
        ];
        let b = [
            e("same", 1, 0o644),
            e("grew", 2, 0o644),
            e("chmod", 1, 0o600),
            e("new", 1, 0o644),
        ];
        let d: Vec<_> = diff_entries("v", &a, &b)
            .into_iter()
            .map(|d| (d.path, d.change.mark()))
            .collect();
        assert_eq!(
            d,
            [("chmod", 'U'), ("gone", '-'), ("grew", 'M'), ("new", '+')]
                .map(|(p, c)| (p.to_string(), c))
        );
    }
}
