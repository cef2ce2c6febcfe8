//! Restore: store → fetch (parallel, ordered) → decrypt/decompress → verify → sink.
//!
//! Every chunk is checked against its keyed id and every stream against its SHA-256 and size
//! before a sink commits. [`plan`] says what would go where and touches nothing; [`apply`]
//! refuses to start if any target is in the way (unless forced).

pub mod sink;
pub mod untar;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::backup::blocking;
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::manifest::{Item, ItemKind, Snapshot};
use crate::progress::Progress;
use crate::repository::Repository;
use sink::{
    CommandSink, DirectorySink, FileSink, Sink, SinkReport, StdoutSink, is_missing_or_empty,
};

/// Where an item is restored to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "to", rename_all = "lowercase")]
pub enum Target {
    /// Untar into a directory.
    Directory(PathBuf),
    /// Write the raw stream to a file.
    File(PathBuf),
    /// Pipe the stream into a shell command.
    Command(String),
    /// Write the raw stream to standard output.
    Stdout,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Directory(p) => write!(f, "directory {}", p.display()),
            Target::File(p) => write!(f, "file {}", p.display()),
            Target::Command(c) => write!(f, "command `{c}`"),
            Target::Stdout => f.write_str("standard output"),
        }
    }
}

/// State of a target before the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    Missing,
    Empty,
    /// Something is there: restoring replaces it, and needs `force`.
    Occupied,
    /// A command or stdout: nothing to inspect.
    NotApplicable,
}

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Only these items (all when empty).
    pub only: Vec<String>,
    /// Not these items.
    pub skip: Vec<String>,
    /// Restore every item under this directory as `DIR/<item name>`.
    pub to: Option<PathBuf>,
    /// Replace occupied targets.
    pub force: bool,
    /// Restore commands by item name (from the config's sources).
    pub restore_commands: HashMap<String, String>,
}

/// One item of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedItem {
    pub name: String,
    pub kind: ItemKind,
    pub format: String,
    pub size: u64,
    pub chunks: usize,
    pub target: Target,
    pub target_state: TargetState,
}

/// What a restore would do, computed without touching anything.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub snapshot: SnapshotId,
    pub snapshot_time: chrono::DateTime<chrono::Utc>,
    pub host: String,
    pub items: Vec<PlannedItem>,
    /// Plaintext bytes to restore.
    pub bytes: u64,
    pub force: bool,
}

impl RestorePlan {
    /// Items whose target is occupied.
    pub fn conflicts(&self) -> Vec<&PlannedItem> {
        self.items
            .iter()
            .filter(|i| i.target_state == TargetState::Occupied)
            .collect()
    }
}

/// Plans a restore of `snapshot`.
pub fn plan(snapshot: &Snapshot, opts: &RestoreOptions) -> Result<RestorePlan> {
    for n in opts.only.iter().chain(&opts.skip) {
        if snapshot.item(n).is_none() {
            return Err(Error::ItemNotFound {
                snapshot: snapshot.id,
                item: n.clone(),
                available: snapshot.source_set().join(", "),
            });
        }
    }
    let mut items = Vec::new();
    for item in &snapshot.items {
        if (!opts.only.is_empty() && !opts.only.contains(&item.name))
            || opts.skip.contains(&item.name)
        {
            continue;
        }
        let target = default_target(item, opts)?;
        let target_state = match &target {
            Target::Directory(p) if !p.exists() && std::fs::symlink_metadata(p).is_err() => {
                TargetState::Missing
            }
            Target::Directory(p) if is_missing_or_empty(p) => TargetState::Empty,
            Target::File(p) if std::fs::symlink_metadata(p).is_err() => TargetState::Missing,
            Target::Directory(_) | Target::File(_) => TargetState::Occupied,
            Target::Command(_) | Target::Stdout => TargetState::NotApplicable,
        };
        items.push(PlannedItem {
            name: item.name.clone(),
            kind: item.kind,
            format: item.format.clone(),
            size: item.size,
            chunks: item.chunks.len(),
            target,
            target_state,
        });
    }
    if items.is_empty() {
        return Err(Error::Usage(
            "nothing to restore: every item was filtered out".into(),
        ));
    }
    Ok(RestorePlan {
        snapshot: snapshot.id,
        snapshot_time: snapshot.time,
        host: snapshot.host.clone(),
        bytes: items.iter().map(|i| i.size).sum(),
        items,
        force: opts.force,
    })
}

fn default_target(item: &Item, opts: &RestoreOptions) -> Result<Target> {
    if let Some(dir) = &opts.to {
        let p = dir.join(&item.name);
        return Ok(if item.kind == ItemKind::Volume {
            Target::Directory(p)
        } else {
            Target::File(p)
        });
    }
    if let Some(cmd) = opts.restore_commands.get(&item.name) {
        return Ok(Target::Command(cmd.clone()));
    }
    if item.kind == ItemKind::Volume
        && let Some(path) = item.facts.get("path").and_then(|v| v.as_str())
    {
        return Ok(Target::Directory(PathBuf::from(path)));
    }
    Err(Error::Usage(format!(
        "item {} ({}) has no default restore target: give --to DIR, a restore_command in the config, or use `lifeboat-restore export`",
        item.name, item.kind
    )))
}

/// Tuning for applying a restore.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Chunks fetched ahead (default: 2 × cores + 2).
    pub concurrency: usize,
    pub progress: Option<Arc<Progress>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            concurrency: crate::backup::default_concurrency(),
            progress: None,
        }
    }
}

/// Result of one restored item.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredItem {
    pub name: String,
    pub size: u64,
    pub seconds: f64,
    #[serde(flatten)]
    pub sink: SinkReport,
}

/// Result of a whole restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub snapshot: SnapshotId,
    pub items: Vec<RestoredItem>,
    pub bytes: u64,
    pub seconds: f64,
}

/// Checks the plan's targets are free (or forced) before anything is touched.
pub fn preflight(plan: &RestorePlan) -> Result<()> {
    if !plan.force
        && let Some(c) = plan.conflicts().first()
    {
        let path = match &c.target {
            Target::Directory(p) | Target::File(p) => p.clone(),
            _ => PathBuf::new(),
        };
        return Err(Error::TargetNotEmpty { path });
    }
    Ok(())
}

/// Restores every planned item, in order; stops at the first failure.
pub async fn apply(
    repo: &Repository,
    snapshot: &Snapshot,
    plan: &RestorePlan,
    opts: &ApplyOptions,
) -> Result<RestoreReport> {
    preflight(plan)?;
    let t0 = std::time::Instant::now();
    let mut items = Vec::new();
    for p in &plan.items {
        items.push(restore_planned(repo, snapshot, p, plan.force, opts).await?);
    }
    Ok(RestoreReport {
        snapshot: snapshot.id,
        bytes: items.iter().map(|i| i.size).sum(),
        items,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Restores one planned item to its target.
pub async fn restore_planned(
    repo: &Repository,
    snapshot: &Snapshot,
    planned: &PlannedItem,
    force: bool,
    opts: &ApplyOptions,
) -> Result<RestoredItem> {
    let item = snapshot
        .item(&planned.name)
        .ok_or_else(|| Error::ItemNotFound {
            snapshot: snapshot.id,
            item: planned.name.clone(),
            available: snapshot.source_set().join(", "),
        })?;
    let sink: Box<dyn Sink> = match &planned.target {
        Target::Directory(p) => Box::new(DirectorySink::create(&item.name, p, force).await?),
        Target::File(p) => Box::new(FileSink::create(&item.name, p, force).await?),
        Target::Command(c) => Box::new(CommandSink::spawn(&item.name, c)?),
        Target::Stdout => Box::new(StdoutSink::new()),
    };
    let t0 = std::time::Instant::now();
    let report = restore_item(repo, snapshot.id, item, sink, opts).await?;
    Ok(RestoredItem {
        name: item.name.clone(),
        size: item.size,
        seconds: t0.elapsed().as_secs_f64(),
        sink: report,
    })
}

/// Streams one item into `sink`, verifying everything, and commits or aborts the sink.
pub async fn restore_item(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &Item,
    mut sink: Box<dyn Sink>,
    opts: &ApplyOptions,
) -> Result<SinkReport> {
    if let Some(p) = &opts.progress {
        p.start_item(&item.name, item.size);
    }
    let streamed = stream_item(repo, snapshot, item, sink.writer(), opts).await;
    match streamed {
        Ok(()) => sink.commit().await,
        Err(e) => {
            let sink_error = sink.abort().await;
            // A failed write is usually the sink giving up (unsafe archive, command died):
            // its own error is the cause. Data errors are the cause in their own right.
            match (e, sink_error) {
                (Error::Sink { .. }, Some(se)) => Err(se),
                (e, _) => Err(e),
            }
        }
    }
}

/// Fetches, decrypts and verifies an item's chunks in order, writing them to `w`.
pub async fn stream_item(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &Item,
    w: &mut (dyn AsyncWrite + Send + Unpin),
    opts: &ApplyOptions,
) -> Result<()> {
    let mut fetches = futures::stream::iter(item.chunks.iter().copied())
        .map(|id| fetch_chunk(repo, snapshot, &item.name, id))
        .buffered(opts.concurrency.max(1));
    let mut sha = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = fetches.next().await {
        let chunk = chunk?;
        sha.update(&chunk);
        size += chunk.len() as u64;
        w.write_all(&chunk).await.map_err(|e| Error::Sink {
            item: item.name.clone(),
            target: "restore target".into(),
            detail: format!("write failed: {e}"),
        })?;
        if let Some(p) = &opts.progress {
            p.add(chunk.len() as u64);
        }
    }
    w.flush().await.map_err(|e| Error::Sink {
        item: item.name.clone(),
        target: "restore target".into(),
        detail: format!("flush failed: {e}"),
    })?;
    let digest = hex::encode(sha.finalize());
    if size != item.size || digest != item.sha256 {
        return Err(Error::StreamMismatch {
            snapshot,
            item: item.name.clone(),
            detail: format!(
                "expected {} bytes with SHA-256 {}, got {size} bytes with {digest}",
                item.size, item.sha256
            ),
        });
    }
    Ok(())
}

/// Reads one chunk and proves it is the chunk named `id`.
pub async fn fetch_chunk(
    repo: &Repository,
    snapshot: SnapshotId,
    item: &str,
    id: ChunkId,
) -> Result<Vec<u8>> {
    let object = match repo.store().get(&id.object_key()).await {
        Ok(o) => o,
        Err(Error::NotFound { .. }) => {
            return Err(Error::ChunkMissing {
                snapshot,
                item: item.to_string(),
                chunk: id,
                location: repo.location(),
            });
        }
        Err(e) => return Err(e),
    };
    let keys = repo.keys().clone();
    let max = repo.config().chunker_params.max_size as usize;
    blocking(move || keys.open_chunk_owned(&id, object, max))
        .await?
        .map_err(|e| Error::ChunkCorrupt {
            snapshot,
            item: item.to_string(),
            chunk: id,
            reason: e.to_string(),
        })
}
