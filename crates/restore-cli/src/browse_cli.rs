//! `ls`, `find`, `dump` and `diff`: the library's catalog browsing, rendered.

use std::path::Path;

use anyhow::Result;
use backup_core::catalog::{Entry, EntryKind};
use backup_core::cli::Output;
use backup_core::commands::browse;
use backup_core::manifest::Snapshot;
use backup_core::progress::human_bytes;
use backup_core::repository::{Repository, SnapshotFilter};
use backup_core::sink::{FileSink, Sink};
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;

pub async fn ls(
    repo: &Repository,
    snap: &Snapshot,
    item: &str,
    path: &str,
    recursive: bool,
    long: bool,
    out: &Output,
) -> Result<()> {
    let it = snap.require(item)?;
    let catalog = browse::load_catalog(repo, snap.id, it).await?;
    let dir = browse::entry(&catalog, snap.id, it, path)?;
    let shown: Vec<&Entry> = if catalog.entries[dir].kind == EntryKind::Dir {
        catalog.under(path, recursive)
    } else {
        vec![dir]
    }
    .into_iter()
    .map(|i| &catalog.entries[i])
    .collect();
    if out.json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    for e in shown {
        if long {
            println!("{}", long_line(e));
        } else {
            println!("{}", e.path);
        }
    }
    Ok(())
}

/// `ls -l`-like: type and mode, owner ids, size, mtime, path (and link target).
fn long_line(e: &Entry) -> String {
    let t = match e.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
        EntryKind::Fifo => 'p',
        EntryKind::Char => 'c',
        EntryKind::Block => 'b',
    };
    let link = match (&e.kind, &e.link) {
        (EntryKind::Symlink, Some(l)) => format!(" -> {l}"),
        (EntryKind::Hardlink, Some(l)) => format!(" link to {l}"),
        _ => String::new(),
    };
    format!(
        "{t}{:04o} {:>5} {:>5} {:>12} {} {}{link}",
        e.mode,
        e.uid,
        e.gid,
        e.size,
        mtime(e),
        e.path
    )
}

fn mtime(e: &Entry) -> String {
    DateTime::<Utc>::from_timestamp(e.mtime_ns.div_euclid(1_000_000_000), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| e.mtime_ns.to_string())
}

pub async fn find(
    repo: &Repository,
    pattern: &str,
    items: &[String],
    filter: &SnapshotFilter,
    out: &Output,
) -> Result<()> {
    let snaps: Vec<Snapshot> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| filter.matches(s))
        .collect();
    let r = browse::find(repo, &snaps, pattern, items).await?;
    if out.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for h in &r.hits {
        println!(
            "{} {} {} {} {:>10} {}",
            h.snapshot,
            h.time.format("%Y-%m-%d %H:%M:%S"),
            h.item,
            h.entry.path,
            human_bytes(h.entry.size),
            mtime(&h.entry)
        );
    }
    if !out.quiet {
        eprintln!(
            "{} matches in {} snapshots",
            r.hits.len(),
            r.snapshots_searched
        );
        if !r.without_catalog.is_empty() {
            eprintln!(
                "not searched (written before file catalogs): {}",
                r.without_catalog.join(", ")
            );
        }
    }
    Ok(())
}

pub async fn dump(
    repo: &Repository,
    snap: &Snapshot,
    item: &str,
    path: &str,
    output: Option<&Path>,
    force: bool,
    out: &Output,
) -> Result<()> {
    let r = match output {
        None => {
            let mut stdout = tokio::io::stdout();
            let r = browse::dump(repo, snap, item, path, &mut stdout).await;
            if r.is_err() {
                eprintln!(
                    "lifeboat-restore: the data already written to stdout is incomplete: discard it"
                );
            }
            stdout.flush().await?;
            r?
        }
        Some(file) => {
            let mut sink: Box<dyn Sink> = Box::new(FileSink::create(item, file, force).await?);
            match browse::dump(repo, snap, item, path, sink.writer()).await {
                Ok(r) => {
                    sink.commit().await?;
                    r
                }
                Err(e) => {
                    sink.abort().await;
                    return Err(e.into());
                }
            }
        }
    };
    let s = &r.selection;
    let human = format!(
        "dumped {} of {} {} ({}): fetched {} of {} chunks ({}), each verified",
        r.path,
        item,
        snap.id,
        human_bytes(s.file_bytes),
        s.chunks_fetched,
        s.chunks_total,
        human_bytes(s.bytes_fetched)
    );
    if out.json {
        eprintln!("{}", serde_json::to_string(&r)?);
    } else if !out.quiet {
        eprintln!("{human}");
    }
    Ok(())
}

pub async fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot, out: &Output) -> Result<()> {
    let r = browse::diff(repo, a, b).await?;
    if out.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    for c in &r.changes {
        println!("{}  {}/{}", c.change.mark(), c.item, c.path);
    }
    if !out.quiet {
        eprintln!("{} → {}: {} changes", a.id, b.id, r.changes.len());
    }
    Ok(())
}
