//! `archive_command` and `restore_command`: WAL files into and out of the repository, with
//! look-ahead on push and prefetch on fetch.
//!
//! Each WAL file is one sealed object `wal/<cluster>/<timeline>/<name>`, its envelope bound to
//! `<cluster>/<name>` so an object cannot be replayed under another name or cluster. A push
//! returns only once the object is durable; it is create-only, so an identical re-push
//! succeeds and a different one is refused without touching what is archived. A push also
//! pushes ahead the segments PostgreSQL has marked ready, in parallel, leaving an
//! acknowledgement in a local spool: the archiver's next calls for those return without
//! deriving the key (pgBackRest's async archive-push, WAL-G's look-ahead). A fetch moves a
//! segment a prefetch worker put beside `pg_wal` into place, again without the key, and starts
//! a worker that keeps the next segments coming while PostgreSQL replays.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::header::{SegmentHeader, cluster_of_data_dir, data_dir_of_wal_path};
use super::name::{ClusterId, WalName};
use crate::codec::ObjectType;
use crate::error::{Error, Result};
use crate::lock::RunLock;
use crate::repository::Repository;
use crate::store::{PutMode, Store};

/// The largest WAL file accepted (segments are 16 MiB by default, at most 1 GiB).
const MAX_WAL_FILE: usize = 1 << 30;

/// Segments pushed ahead at once hold at most about this much (plus their sealed copies).
const LOOKAHEAD_BYTES: u64 = 128 << 20;

/// zstd level for WAL: its zero-filled tails and repeated page images compress well at level 1
/// already, and `archive_command`'s CPU per segment is what must stay low while the server
/// writes (docs/BENCHMARKS.md, point-in-time recovery).
const WAL_ZSTD_LEVEL: i32 = 1;

/// `wal/<cluster>/<timeline>/<name>`.
pub fn object_key(cluster: ClusterId, name: &WalName) -> String {
    format!("wal/{cluster}/{}/{name}", &name.as_str()[..8])
}

/// Where Lifeboat before the cluster namespace put WAL (`wal/<timeline>/<name>`, bound to the
/// name alone): read, never written.
pub(super) fn legacy_key(name: &WalName) -> String {
    format!("wal/{}/{name}", &name.as_str()[..8])
}

fn bound_name(cluster: ClusterId, name: &WalName) -> String {
    format!("{cluster}/{name}")
}

/// How a push behaves beyond the one file.
#[derive(Debug, Clone)]
pub struct WalPushOptions {
    /// Other ready segments pushed ahead in the same call (0: none).
    pub lookahead: usize,
    /// Where acknowledgements of segments pushed ahead are kept (none: no look-ahead).
    pub spool: Option<PathBuf>,
    /// The cluster a history or backup file belongs to, when the data directory's
    /// `pg_control` cannot tell (segments say it in their header).
    pub cluster: Option<ClusterId>,
}

impl Default for WalPushOptions {
    fn default() -> Self {
        WalPushOptions {
            lookahead: 8,
            spool: None,
            cluster: None,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct WalPushReport {
    pub name: WalName,
    pub cluster: ClusterId,
    pub bytes: u64,
    /// It was archived already, with the same content.
    pub already_archived: bool,
    /// Ready segments pushed ahead and acknowledged in the spool.
    pub pushed_ahead: Vec<WalName>,
}

/// Reads a WAL file and names it by its file name.
fn read_wal(path: &Path) -> Result<(WalName, Vec<u8>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{}: no file name", path.display())))?;
    let name = WalName::parse(name)?;
    let data =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok((name, data))
}

/// The cluster a WAL file belongs to: a segment's header says (and must agree with `given`);
/// a history or backup file is the cluster's whose data directory it lies in, or `given`.
fn cluster_of(
    name: &WalName,
    data: &[u8],
    path: &Path,
    given: Option<ClusterId>,
) -> Result<ClusterId> {
    if name.has_wal_pages() {
        let h = SegmentHeader::of_file(name, data)?;
        if let Some(g) = given
            && g != h.cluster
        {
            return Err(Error::WalInvalid {
                name: name.to_string(),
                detail: format!(
                    "it belongs to cluster {}, not to the cluster {g} given",
                    h.cluster
                ),
            });
        }
        return Ok(h.cluster);
    }
    given
        .or_else(|| cluster_of_data_dir(data_dir_of_wal_path(path)))
        .ok_or_else(|| {
            Error::Usage(format!(
                "cannot tell which cluster {name} belongs to: {} is not in a data directory's pg_wal; run it as archive_command does (from the data directory) or give --cluster SYSTEM_IDENTIFIER",
                path.display()
            ))
        })
}

/// `archive_command`: archives the WAL file at `path` durably, then pushes ready segments
/// ahead. Fails, leaving PostgreSQL to keep and retry the file, whenever the file is not
/// durable in the repository.
pub async fn push(repo: &Repository, path: &Path, opts: &WalPushOptions) -> Result<WalPushReport> {
    let (name, data) = read_wal(path)?;
    let cluster = cluster_of(&name, &data, path, opts.cluster)?;
    let bytes = data.len() as u64;
    let already_archived = push_one(repo, cluster, &name, &data).await?;
    drop(data);
    let mut pushed_ahead = Vec::new();
    if let (Some(spool), true) = (&opts.spool, opts.lookahead > 0) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let ready = ready_segments(dir, &name, opts.lookahead);
        // Each push in flight holds its segment and its sealed copy: with 1 GiB segments
        // (initdb --wal-segsize) eight at once would be 16 GiB.
        let parallel = (LOOKAHEAD_BYTES / bytes.max(1)).clamp(1, opts.lookahead as u64) as usize;
        let repo_id = &repo.config().id;
        let results = futures::stream::iter(ready.into_iter().map(|p| async move {
            let (n, d) = read_wal(&p)?;
            // Only this cluster's segments: anything else is pushed (and refused) on its own.
            let c = cluster_of(&n, &d, &p, Some(cluster))?;
            push_one(repo, c, &n, &d).await?;
            // A segment that cannot be acknowledged is simply pushed again when PostgreSQL
            // asks for it.
            write_ack(spool, repo_id, &n, &Sha256::digest(&d))
                .map_err(|e| Error::io(format!("acknowledging {n}"), e))?;
            Ok::<_, Error>(n)
        }))
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await;
        // A segment that failed ahead is pushed again when PostgreSQL asks for it.
        pushed_ahead = results.into_iter().flatten().collect();
        pushed_ahead.sort();
    }
    Ok(WalPushReport {
        name,
        cluster,
        bytes,
        already_archived,
        pushed_ahead,
    })
}

/// Archives one file of `cluster`; `Ok(true)` when the same content was archived already.
pub async fn push_one(
    repo: &Repository,
    cluster: ClusterId,
    name: &WalName,
    data: &[u8],
) -> Result<bool> {
    if data.len() > MAX_WAL_FILE {
        return Err(Error::WalInvalid {
            name: name.to_string(),
            detail: format!("{} bytes is more than a WAL file can be", data.len()),
        });
    }
    let sealed = repo.keys().seal(
        ObjectType::Wal,
        bound_name(cluster, name).as_bytes(),
        data,
        WAL_ZSTD_LEVEL,
    );
    match repo
        .store()
        .put(&object_key(cluster, name), sealed, PutMode::CreateOnly)
        .await
    {
        Ok(()) => Ok(false),
        Err(Error::AlreadyExists { .. }) => {
            let archived = read_archived(repo, cluster, name).await?;
            if Sha256::digest(&archived) == Sha256::digest(data) {
                return Ok(true);
            }
            Err(Error::WalConflict {
                name: name.to_string(),
                location: repo.location(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Reads and authenticates an archived file (falling back to where older Lifeboat put it, then
/// to the pieces `wal stream` stored of a segment).
pub async fn read_archived(
    repo: &Repository,
    cluster: ClusterId,
    name: &WalName,
) -> Result<Vec<u8>> {
    match read_object(repo, &object_key(cluster, name), &bound_name(cluster, name)).await {
        Err(Error::NotFound { .. }) => match read_legacy(repo, cluster, name).await {
            Err(Error::NotFound { .. }) if name.is_segment() => {
                let pieces = super::pieces::list(repo, cluster, name).await?;
                super::pieces::assemble(repo, cluster, name, &pieces).await
            }
            other => other,
        },
        other => other,
    }
}

/// The older layout kept no cluster apart: a segment there may be another cluster's, which
/// recovery must not be handed.
async fn read_legacy(repo: &Repository, cluster: ClusterId, name: &WalName) -> Result<Vec<u8>> {
    let data = read_object(repo, &legacy_key(name), name.as_str()).await?;
    let foreign =
        name.has_wal_pages() && SegmentHeader::parse(&data).is_some_and(|h| h.cluster != cluster);
    if foreign {
        return Err(Error::NotFound {
            key: object_key(cluster, name),
            location: repo.location(),
        });
    }
    Ok(data)
}

/// Whether the whole file `name` of `cluster` is archived (in this layout).
pub async fn object_exists(repo: &Repository, cluster: ClusterId, name: &WalName) -> Result<bool> {
    match repo.store().head(&object_key(cluster, name)).await {
        Ok(_) => Ok(true),
        Err(Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads and authenticates the object `key`, sealed under `bound`.
pub(super) async fn read_object(repo: &Repository, key: &str, bound: &str) -> Result<Vec<u8>> {
    let raw = repo.store().get(key).await?;
    repo.keys()
        .open_owned(ObjectType::Wal, bound.as_bytes(), raw, MAX_WAL_FILE)
        .map_err(|e| Error::Format {
            object: format!("{key} in {}", repo.location()),
            detail: e.to_string(),
        })
}

/// Up to `n` segments after `current` that PostgreSQL has marked `.ready` in `pg_wal`.
fn ready_segments(pg_wal: &Path, current: &WalName, n: usize) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<WalName> = rd
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            let stem = f.to_str()?.strip_suffix(".ready")?;
            WalName::parse(stem).ok()
        })
        .filter(|w| w != current)
        .collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|w| pg_wal.join(w.as_str()))
        .collect()
}

/// `<spool>/<name>`: the repository's id and the pushed content's SHA-256.
fn write_ack(spool: &Path, repo_id: &str, name: &WalName, sha: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(spool)?;
    let tmp = spool.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{repo_id} {}\n", hex::encode(sha)))?;
    std::fs::rename(&tmp, spool.join(name.as_str()))
}

/// The fast path of `archive_command`: the acknowledgement an earlier call's look-ahead left
/// for the file at `path`, if its content is this file's, as the id of the repository it was
/// pushed into (the caller compares it with the repository's, [`repository_id`]). Costs a file
/// read and a hash, no key derivation and no request; consumes the acknowledgement.
pub fn take_ack(spool: &Path, path: &Path) -> Option<String> {
    let (name, data) = read_wal(path).ok()?;
    let ack = spool.join(name.as_str());
    let text = std::fs::read_to_string(&ack).ok()?;
    let _ = std::fs::remove_file(&ack);
    let (repo_id, sha) = text.trim().split_once(' ')?;
    (sha == hex::encode(Sha256::digest(&data))).then(|| repo_id.to_string())
}

/// The repository's config id, read without keys (one small request): what acknowledgements
/// are checked against, so that a re-created repository never inherits them.
pub async fn repository_id(store: &dyn Store) -> Result<String> {
    let raw = store.get("config").await?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| Error::Format {
        object: format!("config of {}", store.location()),
        detail: e.to_string(),
    })?;
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Format {
            object: format!("config of {}", store.location()),
            detail: "no id".into(),
        })
}

/// Writes `data` to `dest` via a temporary sibling renamed into place, so that a reader never
/// sees a partial file. Not synced: what restore_command writes needs no durability (after a
/// crash recovery starts over and asks again), and an fsync per 16 MiB segment only holds up
/// the replay it feeds (docs/BENCHMARKS.md, point-in-time recovery).
fn write_whole(dest: &Path, data: &[u8], tmp: &Path) -> Result<()> {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create_new(tmp)?;
        f.write_all(data)?;
        std::fs::rename(tmp, dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Error::io(format!("writing {}", dest.display()), e)
    })
}

/// `restore_command`: writes the archived file `name` of `cluster` to `dest` (authenticated
/// before anything is written; not synced, see [`write_whole`]). A file not in the
/// archive is [`Error::NotFound`]: recovery asks for history files and for segments past the
/// end, and needs a non-zero exit. Returns the file's bytes, for the caller to learn the
/// segment size from.
pub async fn fetch(
    repo: &Repository,
    cluster: ClusterId,
    name: &WalName,
    dest: &Path,
) -> Result<Vec<u8>> {
    let data = read_archived(repo, cluster, name).await?;
    write_whole(dest, &data, &crate::sink::sibling(dest, "fetch"))?;
    Ok(data)
}

/// The cluster `restore_command` fetches for: `given`, else the one whose data directory
/// `dest` lies in (recovery runs the command there), else the archive's only cluster.
pub async fn cluster_for_fetch(
    repo: &Repository,
    dest: &Path,
    given: Option<ClusterId>,
) -> Result<ClusterId> {
    if let Some(c) = given.or_else(|| cluster_of_data_dir(data_dir_of_wal_path(dest))) {
        return Ok(c);
    }
    let clusters = super::status::Archive::list(repo).await?.cluster_ids();
    match clusters.as_slice() {
        [only] => Ok(*only),
        _ => Err(Error::Usage(format!(
            "cannot tell which cluster to fetch WAL for: {} is not in a data directory and the archive holds {} clusters ({}); give --cluster SYSTEM_IDENTIFIER",
            dest.display(),
            clusters.len(),
            clusters
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Where `wal fetch` keeps segments fetched ahead: `.lifeboat-prefetch` beside the file
/// PostgreSQL asks for (in `pg_wal`): on the same filesystem, so a rename moves a segment into
/// place, and never part of a base backup (pg_basebackup skips `pg_wal`'s contents).
#[derive(Debug, Clone)]
pub struct PrefetchSpool {
    dir: PathBuf,
}

impl PrefetchSpool {
    /// The spool for files written to `dest`.
    pub fn beside(dest: &Path) -> PrefetchSpool {
        let parent = dest.parent().unwrap_or(Path::new(""));
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        PrefetchSpool {
            dir: parent.join(".lifeboat-prefetch"),
        }
    }

    /// The spool of the data directory `pgdata` (recovery writes into its `pg_wal`).
    pub fn of_data_dir(pgdata: &Path) -> PrefetchSpool {
        PrefetchSpool {
            dir: pgdata.join("pg_wal").join(".lifeboat-prefetch"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the data directory this spool is in has left recovery (no `recovery.signal`
    /// or `standby.signal` any more): nothing will take what is spooled.
    fn recovery_over(&self) -> bool {
        let Some(pgdata) = self.dir.parent().and_then(Path::parent) else {
            return false;
        };
        pgdata.join("PG_VERSION").exists()
            && !pgdata.join("recovery.signal").exists()
            && !pgdata.join("standby.signal").exists()
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join(".worker.lock")
    }

    /// Moves the prefetched `name` to `dest`; its bytes when it was there.
    pub fn take(&self, name: &WalName, dest: &Path) -> Option<u64> {
        let src = self.dir.join(name.as_str());
        let len = std::fs::metadata(&src).ok()?.len();
        std::fs::rename(&src, dest).ok()?;
        Some(len)
    }

    /// Whether a prefetch worker holds the spool.
    pub fn worker_running(&self) -> bool {
        self.lock_path().exists()
            && matches!(
                RunLock::acquire(&self.lock_path(), false),
                Err(Error::Locked { .. })
            )
    }

    /// Waits, while a worker runs, for `name` to be spooled; moves it to `dest` then.
    pub fn wait_and_take(&self, name: &WalName, dest: &Path, timeout: Duration) -> Option<u64> {
        let t0 = Instant::now();
        loop {
            if let Some(n) = self.take(name, dest) {
                return Some(n);
            }
            if t0.elapsed() > timeout || !self.worker_running() {
                // One last look: the worker may have finished with it just now.
                return self.take(name, dest);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Spooled segments, oldest first.
    pub fn spooled(&self) -> Vec<WalName> {
        let mut v: Vec<WalName> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| WalName::parse(e.file_name().to_str()?).ok())
            .collect();
        v.sort();
        v
    }

    /// Removes what recovery has passed: spooled segments before `current` on its timeline,
    /// and those of other timelines (recovery asks for one timeline's segments at a time).
    pub fn sweep(&self, current: &WalName) {
        for n in self.spooled() {
            if n.timeline() != current.timeline() || n < *current {
                let _ = std::fs::remove_file(self.dir.join(n.as_str()));
            }
        }
    }

    /// Removes the spool (after recovery).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// How far a prefetch worker runs ahead.
#[derive(Debug, Clone)]
pub struct PrefetchOptions {
    /// Segments kept in the spool ahead of recovery.
    pub ahead: usize,
    /// Segments fetched at once.
    pub parallel: usize,
    /// The worker stops when recovery has taken nothing for this long.
    pub idle: Duration,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions {
            ahead: 8,
            parallel: 4,
            idle: Duration::from_secs(30),
        }
    }
}

/// What a prefetch worker did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PrefetchReport {
    pub fetched: usize,
    pub bytes: u64,
    /// It reached the end of the archive.
    pub end: bool,
}

/// The prefetch worker: keeps up to `ahead` segments after `after` in the spool, fetching
/// `parallel` at a time, until the archive ends, recovery stops taking them, or another
/// worker holds the spool. Each spooled file is authenticated, then renamed in whole.
pub async fn prefetch(
    repo: &Repository,
    cluster: ClusterId,
    spool: &PrefetchSpool,
    after: &WalName,
    seg_size: u64,
    opts: &PrefetchOptions,
) -> Result<PrefetchReport> {
    let mut report = PrefetchReport::default();
    std::fs::create_dir_all(&spool.dir)
        .map_err(|e| Error::io(format!("creating {}", spool.dir.display()), e))?;
    let _lock = match RunLock::acquire(&spool.lock_path(), false) {
        Ok(l) => l,
        Err(Error::Locked { .. }) => return Ok(report),
        Err(e) => return Err(e),
    };
    let Some(mut next) = after.next_segment(seg_size) else {
        return Ok(report);
    };
    let mut last_progress = Instant::now();
    let mut held = usize::MAX;
    while !report.end {
        let spooled = spool.spooled().len();
        if spooled < held {
            last_progress = Instant::now();
        }
        held = spooled;
        if spool.recovery_over() {
            break;
        }
        let room = opts.ahead.saturating_sub(spooled).min(opts.parallel.max(1));
        if room == 0 {
            if last_progress.elapsed() > opts.idle {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let batch: Vec<WalName> =
            std::iter::successors(Some(next.clone()), |n| n.next_segment(seg_size))
                .take(room)
                .collect();
        next = batch
            .last()
            .and_then(|n| n.next_segment(seg_size))
            .expect("segments have successors");
        let fetched =
            futures::future::join_all(batch.iter().map(|n| spool_one(repo, cluster, spool, n)))
                .await;
        for r in fetched {
            match r {
                Ok(bytes) => {
                    report.fetched += 1;
                    report.bytes += bytes;
                }
                Err(Error::NotFound { .. }) => report.end = true,
                Err(e) => return Err(e),
            }
        }
        held += room;
    }
    Ok(report)
}

async fn spool_one(
    repo: &Repository,
    cluster: ClusterId,
    spool: &PrefetchSpool,
    name: &WalName,
) -> Result<u64> {
    let dest = spool.dir.join(name.as_str());
    if dest.exists() {
        return Ok(0);
    }
    let data = read_archived(repo, cluster, name).await?;
    let tmp = spool.dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    write_whole(&dest, &data, &tmp)?;
    Ok(data.len() as u64)
}
