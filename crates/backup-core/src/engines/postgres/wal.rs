//! The WAL archive: PostgreSQL's `archive_command` (push) and `restore_command` (fetch) against
//! the repository, and what it holds (status).
//!
//! Each WAL file is one sealed object `wal/<timeline>/<name>` (envelope type `Wal`, named by
//! its file name, so an object cannot be replayed under another name). A push returns only once
//! the object is durable; it is create-only, so an identical re-push succeeds and a different
//! one is refused without touching what is archived. A push also looks ahead at the segments
//! PostgreSQL has marked ready and pushes them in parallel, leaving an acknowledgement in a
//! local spool: the archiver's next calls for those find the acknowledgement and return without
//! deriving the key or touching the network (pgBackRest's async archive-push, WAL-G's
//! look-ahead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codec::ObjectType;
use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::store::{ObjectMeta, PutMode, Store};

/// The largest WAL file accepted (segments are 16 MiB by default, at most 1 GiB).
const MAX_WAL_FILE: usize = 1 << 30;

/// A WAL file name: a segment (`TTTTTTTTXXXXXXXXYYYYYYYY`), a partial segment (`.partial`), a
/// backup history file (`SEGMENT.OFFSET.backup`) or a timeline history file (`TTTTTTTT.history`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WalName(String);

impl WalName {
    /// Accepts only the names PostgreSQL gives WAL files: anything else is a mistake (`%f` for
    /// `%p`) that must not become an object key.
    pub fn parse(name: &str) -> Result<WalName> {
        // PostgreSQL writes upper-case hex.
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        };
        let ok = match name.split_once('.') {
            None => hex(name, 24),
            Some((seg, "partial")) => hex(seg, 24),
            Some((tli, "history")) => hex(tli, 8),
            Some((seg, rest)) => {
                hex(seg, 24) && rest.strip_suffix(".backup").is_some_and(|off| hex(off, 8))
            }
        };
        if !ok {
            return Err(Error::Usage(format!(
                "{name:?} is not a WAL file name (24 hex digits, optionally .partial or .OFFSET.backup, or TIMELINE.history); archive_command passes %p, restore_command %f"
            )));
        }
        Ok(WalName(name.to_string()))
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `wal/<timeline>/<name>`.
    pub fn object_key(&self) -> String {
        format!("wal/{}/{}", &self.0[..8], self.0)
    }

    /// The timeline the file belongs to.
    pub fn timeline(&self) -> u32 {
        u32::from_str_radix(&self.0[..8], 16).expect("validated hex")
    }

    /// A full segment (not partial, not a history or backup file).
    pub fn is_segment(&self) -> bool {
        self.0.len() == 24
    }

    /// The segment number a segment, partial segment or backup history file belongs to
    /// (`None` for a timeline history file).
    fn segment_no_of_file(&self) -> Option<u64> {
        if self.0.len() < 24 {
            return None;
        }
        WalName(self.0[..24].to_string()).segment_no()
    }

    /// Segment number within its timeline, for 16 MiB segments (log × 256 + seg).
    fn segment_no(&self) -> Option<u64> {
        if !self.is_segment() {
            return None;
        }
        let log = u64::from_str_radix(&self.0[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&self.0[16..24], 16).ok()?;
        Some(log * 0x100 + seg)
    }
}

impl std::fmt::Display for WalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a push behaves beyond the one file.
#[derive(Debug, Clone)]
pub struct WalPushOptions {
    /// Other ready segments pushed ahead in the same call (0: none).
    pub lookahead: usize,
    /// Where acknowledgements of segments pushed ahead are kept (none: no look-ahead).
    pub spool: Option<PathBuf>,
}

impl Default for WalPushOptions {
    fn default() -> Self {
        WalPushOptions {
            lookahead: 8,
            spool: None,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct WalPushReport {
    pub name: WalName,
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

/// `archive_command`: archives the WAL file at `path` durably, then pushes ready segments
/// ahead. Fails, leaving PostgreSQL to keep and retry the file, whenever the file is not
/// durable in the repository.
pub async fn push(repo: &Repository, path: &Path, opts: &WalPushOptions) -> Result<WalPushReport> {
    let (name, data) = read_wal(path)?;
    let bytes = data.len() as u64;
    let already_archived = push_one(repo, &name, &data).await?;
    let mut pushed_ahead = Vec::new();
    if let (Some(spool), true) = (&opts.spool, opts.lookahead > 0) {
        let dir = path.parent().unwrap_or(Path::new("."));
        let ready = ready_segments(dir, &name, opts.lookahead);
        let results = futures::stream::iter(ready.into_iter().map(|p| async move {
            let (n, d) = read_wal(&p)?;
            push_one(repo, &n, &d).await?;
            Ok::<_, Error>((n, d))
        }))
        .buffer_unordered(opts.lookahead)
        .collect::<Vec<_>>()
        .await;
        // A segment that failed ahead is simply pushed again when PostgreSQL asks for it.
        for (n, d) in results.into_iter().flatten() {
            if write_ack(spool, &repo.config().id, &n, &d).is_ok() {
                pushed_ahead.push(n);
            }
        }
        pushed_ahead.sort();
    }
    Ok(WalPushReport {
        name,
        bytes,
        already_archived,
        pushed_ahead,
    })
}

/// Archives one file; `Ok(true)` when the same content was archived already.
pub async fn push_one(repo: &Repository, name: &WalName, data: &[u8]) -> Result<bool> {
    if data.len() > MAX_WAL_FILE {
        return Err(Error::Usage(format!(
            "{name}: {} bytes is not a WAL file",
            data.len()
        )));
    }
    let sealed = repo
        .keys()
        .seal(ObjectType::Wal, name.as_str().as_bytes(), data, 3);
    match repo
        .store()
        .put(&name.object_key(), sealed, PutMode::CreateOnly)
        .await
    {
        Ok(()) => Ok(false),
        Err(Error::AlreadyExists { .. }) => {
            let archived = read_archived(repo, name).await?;
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

async fn read_archived(repo: &Repository, name: &WalName) -> Result<Vec<u8>> {
    let key = name.object_key();
    let raw = repo.store().get(&key).await?;
    repo.keys()
        .open_owned(ObjectType::Wal, name.as_str().as_bytes(), raw, MAX_WAL_FILE)
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
fn write_ack(spool: &Path, repo_id: &str, name: &WalName, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(spool)?;
    let tmp = spool.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(
        &tmp,
        format!("{repo_id} {}\n", hex::encode(Sha256::digest(data))),
    )?;
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

/// `restore_command`: writes the archived file `name` to `dest` (via a temporary sibling,
/// renamed once complete and synced). A file not in the archive is [`Error::NotFound`]:
/// recovery asks for history files and for segments past the end, and needs a non-zero exit.
pub async fn fetch(repo: &Repository, name: &WalName, dest: &Path) -> Result<u64> {
    let data = read_archived(repo, name).await?;
    let tmp = crate::sink::sibling(dest, "fetch");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create_new(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing {}", dest.display()), e)
    })?;
    Ok(data.len() as u64)
}

/// What the archive holds, per timeline.
#[derive(Debug, Clone, Serialize)]
pub struct WalStatus {
    pub location: String,
    pub timelines: Vec<TimelineStatus>,
    /// `.ready` files in the local `pg_wal` (not archived yet), when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<usize>,
}

/// One timeline's archived WAL.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineStatus {
    pub timeline: u32,
    pub segments: usize,
    pub bytes: u64,
    pub oldest: Option<WalName>,
    pub newest: Option<WalName>,
    /// When the newest segment was archived.
    pub newest_archived: Option<DateTime<Utc>>,
    pub history: bool,
    /// Missing ranges of segments (first missing, last missing), for 16 MiB segments.
    pub gaps: Vec<(String, String)>,
}

/// What `check` finds in the WAL archive: the files it holds, and what a recovery would trip
/// over — a gap in a timeline's segments (recovery stops at the first missing one), and with
/// `read_data` a file that does not open (altered, truncated, stored under another name).
pub async fn verify(repo: &Repository, read_data: bool) -> Result<(usize, Vec<String>)> {
    let listed = listing(repo).await?;
    let named = listed
        .iter()
        .filter_map(|(n, m)| n.clone().map(|n| (n, m.clone())));
    let mut problems = Vec::new();
    for t in &timelines(named.collect()) {
        for (a, b) in &t.gaps {
            problems.push(format!(
                "WAL archive: segments {a} .. {b} of timeline {} are missing; recovery past {a} is impossible (take a new base backup)",
                t.timeline
            ));
        }
    }
    let mut files = 0;
    for (name, m) in listed {
        let Some(name) = name else {
            problems.push(format!("WAL archive: {} is not a WAL file name", m.key));
            continue;
        };
        files += 1;
        if read_data && let Err(e) = read_archived(repo, &name).await {
            problems.push(format!("WAL archive: {name}: {e}"));
        }
    }
    Ok((files, problems))
}

/// What WAL retention removed (or, dry, would).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalPruneReport {
    /// The oldest kept base backup's start segment: WAL from here on is kept.
    pub kept_from: Option<String>,
    /// Why nothing was removed, when nothing could be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_all: Option<String>,
    pub removed: usize,
    pub removed_bytes: u64,
    /// Objects the store refused to delete (Object Lock).
    pub retained: usize,
}

/// Removes WAL no kept base backup needs: segments (and partial and backup files) before the
/// oldest kept base backup's start segment, on every timeline. History files stay (small, and
/// recovery needs them to follow timelines). Nothing is removed without a base backup to go
/// by, or while a snapshot cannot be read (it might be the oldest base backup).
pub async fn prune_wal(
    repo: &Repository,
    snapshots: &[crate::manifest::Snapshot],
    damaged: usize,
    dry_run: bool,
) -> Result<WalPruneReport> {
    let mut report = WalPruneReport::default();
    let oldest = snapshots
        .iter()
        .flat_map(|s| &s.items)
        .filter(|i| super::base::is_base_backup(i))
        .filter_map(|i| super::base::BaseFacts::of(i).start_wal)
        .filter_map(|w| WalName::parse(&w).ok())
        .filter_map(|w| w.segment_no().map(|n| (n, w)))
        .min();
    let Some((keep_from, name)) = oldest else {
        report.kept_all = Some("no base backup is kept: every WAL file stays".into());
        return Ok(report);
    };
    report.kept_from = Some(name.to_string());
    if damaged > 0 {
        report.kept_all = Some(format!(
            "{damaged} snapshots could not be read (one may be an older base backup): every WAL file stays"
        ));
        return Ok(report);
    }
    for (w, m) in archived(repo).await? {
        let Some(no) = w.segment_no_of_file() else {
            continue;
        };
        if no >= keep_from {
            continue;
        }
        if !dry_run {
            match repo.store().delete(&m.key).await {
                Ok(()) => {}
                Err(Error::Retained { .. }) => {
                    report.retained += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.removed += 1;
        report.removed_bytes += m.size;
    }
    Ok(report)
}

/// Every object under `wal/`, with its WAL file name (`None`: a key that is not one).
async fn listing(repo: &Repository) -> Result<Vec<(Option<WalName>, ObjectMeta)>> {
    Ok(repo
        .store()
        .list("wal/")
        .await?
        .into_iter()
        .map(|m| {
            let name = m
                .key
                .rsplit('/')
                .next()
                .and_then(|n| WalName::parse(n).ok());
            (name, m)
        })
        .collect())
}

/// The WAL files of the archive.
async fn archived(repo: &Repository) -> Result<Vec<(WalName, ObjectMeta)>> {
    Ok(listing(repo)
        .await?
        .into_iter()
        .filter_map(|(n, m)| n.map(|n| (n, m)))
        .collect())
}

/// An archived file: its name, stored size, and when it was archived.
type Archived = (WalName, u64, Option<DateTime<Utc>>);

/// Lists the archive; with `pg_wal`, also counts what is waiting to be archived.
pub async fn status(repo: &Repository, pg_wal: Option<&Path>) -> Result<WalStatus> {
    let timelines = timelines(archived(repo).await?);
    let backlog = pg_wal.map(|d| {
        std::fs::read_dir(d.join("archive_status"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                    .count()
            })
            .unwrap_or(0)
    });
    Ok(WalStatus {
        location: repo.location(),
        timelines,
        backlog,
    })
}

/// The archived files, by timeline.
fn timelines(files: Vec<(WalName, ObjectMeta)>) -> Vec<TimelineStatus> {
    let mut by_tli: BTreeMap<u32, Vec<Archived>> = BTreeMap::new();
    for (name, m) in files {
        by_tli
            .entry(name.timeline())
            .or_default()
            .push((name, m.size, m.modified));
    }
    by_tli
        .into_iter()
        .map(|(tli, files)| timeline_status(tli, files))
        .collect()
}

fn timeline_status(tli: u32, files: Vec<Archived>) -> TimelineStatus {
    let history = files
        .iter()
        .any(|(n, _, _)| n.as_str().ends_with(".history"));
    let mut segs: Vec<&Archived> = files.iter().filter(|(n, _, _)| n.is_segment()).collect();
    segs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut gaps = Vec::new();
    for w in segs.windows(2) {
        let (Some(a), Some(b)) = (w[0].0.segment_no(), w[1].0.segment_no()) else {
            continue;
        };
        if b > a + 1 {
            gaps.push((segment_name(tli, a + 1), segment_name(tli, b - 1)));
        }
    }
    TimelineStatus {
        timeline: tli,
        segments: segs.len(),
        bytes: files.iter().map(|(_, s, _)| s).sum(),
        oldest: segs.first().map(|s| s.0.clone()),
        newest: segs.last().map(|s| s.0.clone()),
        newest_archived: segs.last().and_then(|s| s.2),
        history,
        gaps,
    }
}

fn segment_name(tli: u32, no: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", no / 0x100, no % 0x100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wal_file_names_are_accepted() {
        for ok in [
            "000000010000000000000003",
            "000000010000000000000003.partial",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
        ] {
            assert_eq!(WalName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "pg_wal/000000010000000000000003",
            "00000001000000000000003",
            "000000010000000000000003.ready",
            "../00000002.history",
            "000000010000000000000003.0000002.backup",
            "0000000a0000000000000003",
        ] {
            assert!(WalName::parse(bad).is_err(), "{bad}");
        }
        let n = WalName::parse("0000000200000001000000FF").unwrap();
        assert_eq!(n.object_key(), "wal/00000002/0000000200000001000000FF");
        assert_eq!(n.timeline(), 2);
        assert_eq!(n.segment_no(), Some(0x1FF));
        assert_eq!(segment_name(2, 0x200), "000000020000000200000000");
    }

    #[test]
    fn gaps_are_named() {
        let f = |n: &str| (WalName::parse(n).unwrap(), 16u64 << 20, None);
        let st = timeline_status(
            1,
            vec![
                f("000000010000000000000001"),
                f("000000010000000000000002"),
                f("000000010000000000000005"),
                f("000000010000000100000000"),
            ],
        );
        assert_eq!(
            st.gaps,
            vec![
                (
                    "000000010000000000000003".into(),
                    "000000010000000000000004".into()
                ),
                (
                    "000000010000000000000006".into(),
                    "0000000100000000000000FF".into()
                ),
            ]
        );
        assert_eq!(st.newest.unwrap().as_str(), "000000010000000100000000");
    }
}
