//! What the WAL archive holds, per cluster and timeline; what `check` finds wrong with it
//! (gaps, timelines that cannot be followed, base backups whose WAL chain is broken); and
//! WAL retention, which follows the base backups that are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::archive::{legacy_key, read_archived, read_object};
use super::header::SegmentHeader;
use super::name::{ClusterId, DEFAULT_SEGMENT_SIZE, WalName, format_lsn};
use super::pieces::{self, Piece};
use super::timeline::{Timelines, needed, parse_history};
use crate::engines::postgres::base::{BaseBackup, base_backups};
use crate::error::{Error, Result};
use crate::manifest::Snapshot;
use crate::repository::Repository;
use crate::store::ObjectMeta;

/// One archived file.
#[derive(Debug, Clone)]
pub struct Archived {
    pub name: WalName,
    pub meta: ObjectMeta,
    /// Written by Lifeboat before WAL was kept per cluster (`wal/<timeline>/<name>`).
    pub legacy: bool,
    /// Pieces `wal stream` stored of this segment: what it is made of when no whole segment
    /// is archived, else left over from before the whole one came.
    pub pieces: Vec<Piece>,
    /// Assembled from pieces (no whole segment archived): the bytes they cover from the start.
    pub streamed_to: Option<u64>,
}

impl Archived {
    /// Whether this is a segment only partly streamed so far.
    pub fn partial(&self, seg_size: u64) -> bool {
        self.streamed_to.is_some_and(|n| n < seg_size)
    }

    /// Every object this file is stored in.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        let whole = self.streamed_to.is_none().then_some(self.meta.key.as_str());
        whole
            .into_iter()
            .chain(self.pieces.iter().map(|p| p.meta.key.as_str()))
    }
}

/// The archive as one listing of `wal/` shows it.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub clusters: BTreeMap<ClusterId, Vec<Archived>>,
    /// Files of the older layout whose cluster is unknown (more than one cluster has base
    /// backups): kept, read by fetch as a fallback.
    pub unattributed: Vec<Archived>,
    /// Keys under `wal/` that are not WAL files of either layout.
    pub foreign: Vec<String>,
}

impl Archive {
    /// Lists `wal/` once.
    pub async fn list(repo: &Repository) -> Result<Archive> {
        let mut a = Archive::default();
        let mut pieces: BTreeMap<(ClusterId, WalName), Vec<Piece>> = BTreeMap::new();
        for m in repo.store().list("wal/").await? {
            let parts: Vec<&str> = m.key.split('/').collect();
            if let Some((c, p)) = pieces::parse(&parts, &m) {
                pieces.entry((c, p.segment.clone())).or_default().push(p);
                continue;
            }
            let parsed = match parts.as_slice() {
                ["wal", c, tli, n] => WalName::parse(n)
                    .ok()
                    .filter(|w| &w.as_str()[..8] == *tli)
                    .zip(c.parse::<u64>().ok().map(ClusterId)),
                _ => None,
            };
            if let Some((name, cluster)) = parsed {
                a.clusters.entry(cluster).or_default().push(Archived {
                    name,
                    meta: m,
                    legacy: false,
                    pieces: Vec::new(),
                    streamed_to: None,
                });
                continue;
            }
            let legacy = match parts.as_slice() {
                ["wal", tli, n] => WalName::parse(n).ok().filter(|w| &w.as_str()[..8] == *tli),
                _ => None,
            };
            match legacy {
                Some(name) => a.unattributed.push(Archived {
                    name,
                    meta: m,
                    legacy: true,
                    pieces: Vec::new(),
                    streamed_to: None,
                }),
                None => a.foreign.push(m.key),
            }
        }
        for ((c, seg), ps) in pieces {
            a.add_streamed(c, seg, ps);
        }
        Ok(a)
    }

    /// Gives streamed pieces to the whole segment they belong to, or makes them one.
    fn add_streamed(&mut self, cluster: ClusterId, segment: WalName, ps: Vec<Piece>) {
        let files = self.clusters.entry(cluster).or_default();
        if let Some(f) = files.iter_mut().find(|f| f.name == segment) {
            f.pieces = ps;
            return;
        }
        let reached = pieces::chain(&ps).1;
        let meta = ObjectMeta {
            key: pieces::prefix(cluster, &segment),
            size: ps.iter().map(|p| p.meta.size).sum(),
            modified: ps.iter().filter_map(|p| p.meta.modified).max(),
        };
        files.push(Archived {
            name: segment,
            meta,
            legacy: false,
            pieces: ps,
            streamed_to: Some(reached),
        });
        files.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Gives the older layout's files to the cluster they belong to, when the repository's
    /// base backups name exactly one cluster (the older layout held one).
    pub fn attribute(&mut self, bases: &[BaseBackup<'_>]) {
        let clusters: BTreeSet<ClusterId> = bases.iter().filter_map(|b| b.cluster).collect();
        if let ([only], false) = (
            clusters.iter().copied().collect::<Vec<_>>().as_slice(),
            self.unattributed.is_empty(),
        ) {
            let files = std::mem::take(&mut self.unattributed);
            let list = self.clusters.entry(*only).or_default();
            list.extend(files);
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }

    /// The clusters with archived WAL.
    pub fn cluster_ids(&self) -> Vec<ClusterId> {
        self.clusters.keys().copied().collect()
    }

    /// One cluster's files (none if it has none).
    pub fn files(&self, cluster: ClusterId) -> &[Archived] {
        self.clusters
            .get(&cluster)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// One cluster's archive, with the segment size its segment numbers are counted in.
#[derive(Debug, Clone, Copy)]
pub struct ClusterArchive<'a> {
    pub cluster: ClusterId,
    pub files: &'a [Archived],
    pub seg_size: u64,
}

impl<'a> ClusterArchive<'a> {
    /// `cluster`'s part of `archive`, its segment size taken from its base backups.
    pub fn of(archive: &'a Archive, cluster: ClusterId, bases: &[BaseBackup<'_>]) -> Self {
        let seg_size = bases
            .iter()
            .find(|b| b.cluster == Some(cluster))
            .map(|b| b.facts.segment_size())
            .unwrap_or(DEFAULT_SEGMENT_SIZE);
        ClusterArchive {
            cluster,
            files: archive.files(cluster),
            seg_size,
        }
    }

    /// Segment numbers present, per timeline.
    pub fn segments(&self) -> BTreeMap<u32, BTreeSet<u64>> {
        let mut out: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        let mut partial: Vec<(u32, u64)> = Vec::new();
        for f in self.files {
            if let Some(no) = f.name.segment_no(self.seg_size) {
                if f.streamed_to == Some(0) {
                    continue;
                }
                out.entry(f.name.timeline()).or_default().insert(no);
                if f.partial(self.seg_size) {
                    partial.push((f.name.timeline(), no));
                }
            }
        }
        // A partly streamed segment ends the archive: usable as the newest segment of its
        // timeline (recovery ends inside it), a hole anywhere before.
        for (tli, no) in partial {
            let set = out.get_mut(&tli).expect("inserted above");
            if set.last() != Some(&no) {
                set.remove(&no);
            }
        }
        out
    }

    /// The timelines' histories, read from the archived history files (a history file that
    /// does not open or parse is a problem, and its timeline unknown).
    pub async fn timelines(&self, repo: &Repository) -> Result<(Timelines, Vec<String>)> {
        let mut t = Timelines::new();
        let mut problems = Vec::new();
        for f in self.files.iter().filter(|f| f.name.is_history()) {
            let parsed = match self.read(repo, f).await {
                Ok(bytes) => parse_history(&String::from_utf8_lossy(&bytes)),
                Err(e) => Err(e.to_string()),
            };
            match parsed {
                Ok(h) => t.add(f.name.timeline(), h),
                Err(e) => problems.push(format!(
                    "WAL archive of cluster {}: {}: {e}",
                    self.cluster, f.name
                )),
            }
        }
        Ok((t, problems))
    }

    /// Reads and authenticates one file.
    pub async fn read(&self, repo: &Repository, f: &Archived) -> Result<Vec<u8>> {
        if f.legacy {
            read_object(repo, &legacy_key(&f.name), f.name.as_str()).await
        } else {
            read_archived(repo, self.cluster, &f.name).await
        }
    }

    /// Missing stretches `(first, last)` of a timeline's segments between its oldest and newest.
    pub fn gaps(&self, present: &BTreeSet<u64>) -> Vec<(u64, u64)> {
        let v: Vec<u64> = present.iter().copied().collect();
        v.windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| (w[0] + 1, w[1] - 1))
            .collect()
    }

    /// The first segment a recovery from `base` along `timeline` needs and the archive lacks,
    /// looking as far as the archive goes on the last timeline (`Ok(None)`: nothing missing).
    pub fn first_missing(
        &self,
        base: &BaseBackup<'_>,
        timelines: &Timelines,
        timeline: u32,
        upto_lsn: Option<u64>,
    ) -> std::result::Result<Option<WalName>, String> {
        let (Some(start), Some(stop), Some(btl)) =
            (base.facts.start(), base.facts.stop(), base.facts.timeline)
        else {
            return Ok(None);
        };
        let path = timelines.reach(btl, stop, timeline)?;
        let segs = self.segments();
        let empty = BTreeSet::new();
        for (tli, first, last) in needed(&path, start, self.seg_size) {
            let have = segs.get(&tli).unwrap_or(&empty);
            let last = match (last, upto_lsn) {
                (Some(l), _) => l,
                (None, Some(lsn)) => lsn / self.seg_size,
                (None, None) => match have.range(first..).next_back() {
                    Some(newest) => *newest,
                    None => continue,
                },
            };
            if let Some(missing) = (first..=last).find(|n| !have.contains(n)) {
                return Ok(Some(WalName::segment(tli, missing, self.seg_size)));
            }
        }
        Ok(None)
    }
}

/// What the archive holds.
#[derive(Debug, Clone, Serialize)]
pub struct WalStatus {
    pub location: String,
    pub clusters: Vec<ClusterStatus>,
    /// Files of the older layout that no single cluster claims.
    pub unattributed_files: usize,
    /// What waits in the local `pg_wal`, when it was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Backlog>,
    /// What a running `wal stream` last said (its `--status-file`), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<super::stream::StreamStatus>,
}

/// One cluster's archived WAL.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: ClusterId,
    pub segment_size: u64,
    pub timelines: Vec<TimelineStatus>,
    /// The newest timeline with a known history (what a restore follows by default).
    pub newest_timeline: u32,
    pub base_backups: usize,
    /// When the newest file with WAL in it reached the repository (whether or not a base
    /// backup exists yet: archive freshness is watched from the first segment on).
    pub newest_archived: Option<DateTime<Utc>>,
    /// Moments a point-in-time restore can reach: from the end of the oldest base backup to
    /// the newest archived segment (none without a base backup).
    pub window: Option<Window>,
    /// Segments and bytes archived in the last hour.
    pub last_hour_segments: usize,
    pub last_hour_bytes: u64,
    /// Histories that do not agree, timelines that cannot be followed.
    pub problems: Vec<String>,
}

/// The recoverable window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

/// One timeline's archived WAL.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineStatus {
    pub timeline: u32,
    pub segments: usize,
    pub bytes: u64,
    pub oldest: Option<WalName>,
    pub newest: Option<WalName>,
    /// When the newest segment was archived (or its newest streamed piece written).
    pub newest_archived: Option<DateTime<Utc>>,
    /// How far the archive reaches on this timeline: the newest segment's end, or where its
    /// streamed pieces end.
    pub archived_to: Option<String>,
    /// The newest segment is streamed in part so far (`wal stream`).
    pub streaming: bool,
    pub history: bool,
    /// The timeline it branched off, and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branched_from: Option<(u32, String)>,
    /// Missing ranges of segments (first missing, last missing).
    pub gaps: Vec<(WalName, WalName)>,
}

/// Segments waiting in `pg_wal` to be archived: how far behind the archive is.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub ready: usize,
    pub bytes: u64,
    pub oldest: Option<WalName>,
    /// How long the oldest has waited (since PostgreSQL marked it ready).
    pub oldest_age_seconds: Option<f64>,
}

/// `.ready` files in `pg_wal/archive_status`, their bytes and the oldest one's age.
pub fn backlog(pg_wal: &Path) -> Backlog {
    let mut ready: Vec<(WalName, std::fs::Metadata)> =
        std::fs::read_dir(pg_wal.join("archive_status"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let f = e.file_name();
                let n = WalName::parse(f.to_str()?.strip_suffix(".ready")?).ok()?;
                Some((n, e.metadata().ok()?))
            })
            .collect();
    ready.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = ready
        .iter()
        .filter_map(|(n, _)| std::fs::metadata(pg_wal.join(n.as_str())).ok())
        .map(|m| m.len())
        .sum();
    let oldest_age_seconds = ready
        .iter()
        .filter_map(|(_, m)| m.modified().ok())
        .min()
        .map(|t| t.elapsed().unwrap_or_default().as_secs_f64());
    Backlog {
        ready: ready.len(),
        bytes,
        oldest: ready.first().map(|(n, _)| n.clone()),
        oldest_age_seconds,
    }
}

/// Lists the archive; with `pg_wal`, also what is waiting to be archived.
pub async fn status(repo: &Repository, pg_wal: Option<&Path>) -> Result<WalStatus> {
    let snapshots = repo.snapshots().await?;
    let bases = base_backups(&snapshots);
    let mut archive = Archive::list(repo).await?;
    archive.attribute(&bases);
    let mut clusters = Vec::new();
    for c in archive.cluster_ids() {
        clusters.push(cluster_status(repo, ClusterArchive::of(&archive, c, &bases), &bases).await?);
    }
    Ok(WalStatus {
        location: repo.location(),
        clusters,
        unattributed_files: archive.unattributed.len(),
        backlog: pg_wal.map(backlog),
        stream: None,
    })
}

async fn cluster_status(
    repo: &Repository,
    ca: ClusterArchive<'_>,
    bases: &[BaseBackup<'_>],
) -> Result<ClusterStatus> {
    let (timelines, mut problems) = ca.timelines(repo).await?;
    let segs = ca.segments();
    problems.extend(timelines.problems(&segs.keys().copied().collect()));
    let mut by_tli: BTreeMap<u32, Vec<&Archived>> = BTreeMap::new();
    for f in ca.files {
        by_tli.entry(f.name.timeline()).or_default().push(f);
    }
    let tls: Vec<TimelineStatus> = by_tli
        .iter()
        .map(|(tli, files)| timeline_status(&ca, &timelines, *tli, files, segs.get(tli)))
        .collect();
    let mine: Vec<&BaseBackup> = bases
        .iter()
        .filter(|b| b.cluster == Some(ca.cluster))
        .collect();
    let newest_archived = ca
        .files
        .iter()
        .filter(|f| f.name.has_wal_pages())
        .filter_map(|f| f.meta.modified)
        .max();
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let recent: Vec<&Archived> = ca
        .files
        .iter()
        .filter(|f| f.name.is_segment() && f.meta.modified.is_some_and(|t| t > hour_ago))
        .collect();
    Ok(ClusterStatus {
        cluster: ca.cluster,
        segment_size: ca.seg_size,
        timelines: tls,
        newest_timeline: timelines.newest(),
        base_backups: mine.len(),
        newest_archived,
        window: mine
            .iter()
            .map(|b| b.item.finished)
            .min()
            .map(|from| Window {
                from,
                to: newest_archived,
            }),
        last_hour_segments: recent.len(),
        last_hour_bytes: recent.len() as u64 * ca.seg_size,
        problems,
    })
}

fn timeline_status(
    ca: &ClusterArchive<'_>,
    timelines: &Timelines,
    tli: u32,
    files: &[&Archived],
    present: Option<&BTreeSet<u64>>,
) -> TimelineStatus {
    let segs: Vec<&&Archived> = files.iter().filter(|f| f.name.is_segment()).collect();
    let empty = BTreeSet::new();
    let gaps = ca
        .gaps(present.unwrap_or(&empty))
        .into_iter()
        .map(|(a, b)| {
            (
                WalName::segment(tli, a, ca.seg_size),
                WalName::segment(tli, b, ca.seg_size),
            )
        })
        .collect();
    let branched_from = timelines
        .path(tli)
        .filter(|p| p.len() > 1)
        .map(|p| p[p.len() - 2])
        .map(|s| (s.timeline, format_lsn(s.end.unwrap_or_default())));
    TimelineStatus {
        timeline: tli,
        segments: segs.len(),
        bytes: files.iter().map(|f| f.meta.size).sum(),
        oldest: segs.first().map(|f| f.name.clone()),
        newest: segs.last().map(|f| f.name.clone()),
        newest_archived: segs.last().and_then(|f| f.meta.modified),
        archived_to: segs.last().and_then(|f| {
            let no = f.name.segment_no(ca.seg_size)?;
            Some(format_lsn(
                no * ca.seg_size + f.streamed_to.unwrap_or(ca.seg_size),
            ))
        }),
        streaming: segs.last().is_some_and(|f| f.partial(ca.seg_size)),
        history: tli == 1 || files.iter().any(|f| f.name.is_history()),
        branched_from,
        gaps,
    }
}

/// What `check` finds in the WAL archive: the files it holds, and what a recovery would trip
/// over — a gap in a timeline's segments, a history that disagrees or is missing, a kept base
/// backup whose chain to any timeline it can reach is broken, and with `read_data` a file
/// that does not open or whose header is not the segment its name says.
pub async fn verify(
    repo: &Repository,
    snapshots: &[Snapshot],
    read_data: bool,
) -> Result<(usize, Vec<String>)> {
    let bases = base_backups(snapshots);
    let mut archive = Archive::list(repo).await?;
    archive.attribute(&bases);
    let mut problems: Vec<String> = archive
        .foreign
        .iter()
        .map(|k| format!("WAL archive: {k} is not a WAL file name"))
        .collect();
    let mut files = archive.unattributed.len();
    for c in archive.cluster_ids() {
        let ca = ClusterArchive::of(&archive, c, &bases);
        files += ca.files.len();
        problems.extend(verify_cluster(repo, &ca, &bases).await?);
        if read_data {
            problems.extend(read_every_file(repo, &ca).await);
        }
    }
    Ok((files, problems))
}

async fn verify_cluster(
    repo: &Repository,
    ca: &ClusterArchive<'_>,
    bases: &[BaseBackup<'_>],
) -> Result<Vec<String>> {
    let (timelines, mut problems) = ca.timelines(repo).await?;
    let segs = ca.segments();
    problems.extend(timelines.problems(&segs.keys().copied().collect()));
    for (tli, present) in &segs {
        for (a, b) in ca.gaps(present) {
            problems.push(format!(
                "WAL archive of cluster {}: segments {} .. {} of timeline {tli} are missing; recovery past {} is impossible (take a new base backup)",
                ca.cluster,
                WalName::segment(*tli, a, ca.seg_size),
                WalName::segment(*tli, b, ca.seg_size),
                WalName::segment(*tli, a, ca.seg_size),
            ));
        }
    }
    for b in bases.iter().filter(|b| b.cluster == Some(ca.cluster)) {
        let Some(btl) = b.facts.timeline else {
            continue;
        };
        for tli in timelines.known() {
            let stop = b.facts.stop().unwrap_or_default();
            if timelines.reach(btl, stop, tli).is_err() {
                continue;
            }
            if let Ok(Some(missing)) = ca.first_missing(b, &timelines, tli, None) {
                problems.push(format!(
                    "base backup {} of snapshot {} (cluster {}): recovery to timeline {tli} stops at {missing}, which the archive lacks",
                    b.item.name,
                    b.snapshot.id.short(),
                    ca.cluster
                ));
            }
        }
    }
    Ok(problems)
}

/// Opens every file; a segment must also carry this cluster's header for its own name.
async fn read_every_file(repo: &Repository, ca: &ClusterArchive<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    for f in ca.files {
        let r = ca.read(repo, f).await.and_then(|data| {
            if !f.name.has_wal_pages() {
                return Ok(());
            }
            let h = SegmentHeader::of_file(&f.name, &data)?;
            if h.cluster != ca.cluster {
                return Err(Error::WalInvalid {
                    name: f.name.to_string(),
                    detail: format!("it belongs to cluster {}", h.cluster),
                });
            }
            Ok(())
        });
        if let Err(e) = r {
            problems.push(format!(
                "WAL archive of cluster {}: {}: {e}",
                ca.cluster, f.name
            ));
        }
    }
    problems
}

/// What WAL retention removed (or, dry, would), in all.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalPruneReport {
    pub removed: usize,
    pub removed_bytes: u64,
    /// Objects the store refused to delete (Object Lock).
    pub retained: usize,
    pub clusters: Vec<ClusterPrune>,
}

/// WAL retention for one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterPrune {
    pub cluster: ClusterId,
    /// The oldest kept base backup's start segment: WAL from here on is kept.
    pub kept_from: Option<WalName>,
    /// Why nothing was removed, when nothing could be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_all: Option<String>,
    pub removed: usize,
    pub removed_bytes: u64,
}

/// Removes WAL no kept base backup needs: per cluster, segments (and partial and backup files)
/// before the oldest kept base backup's start segment, on every timeline. History files stay
/// (small, and recovery needs them to follow timelines). Nothing of a cluster is removed
/// without a base backup of it, nothing at all while a snapshot cannot be read (it might be
/// the oldest base backup), and never a file of the older layout whose cluster is unknown.
pub async fn prune_wal(
    repo: &Repository,
    kept: &[Snapshot],
    damaged: usize,
    dry_run: bool,
) -> Result<WalPruneReport> {
    let bases = base_backups(kept);
    let mut archive = Archive::list(repo).await?;
    archive.attribute(&bases);
    let mut report = WalPruneReport::default();
    for c in archive.cluster_ids() {
        let ca = ClusterArchive::of(&archive, c, &bases);
        let mut cp = ClusterPrune {
            cluster: c,
            kept_from: None,
            kept_all: None,
            removed: 0,
            removed_bytes: 0,
        };
        let oldest = bases
            .iter()
            .filter(|b| b.cluster == Some(c))
            .filter_map(|b| Some((b.facts.start()? / ca.seg_size, b.facts.timeline?)))
            .min();
        cp.kept_all = match (oldest, damaged) {
            (None, _) => {
                Some("no base backup of this cluster is kept: every WAL file stays".into())
            }
            (_, d) if d > 0 => Some(format!(
                "{d} snapshots could not be read (one may be an older base backup): every WAL file stays"
            )),
            _ => None,
        };
        cp.kept_from = oldest.map(|(no, tli)| WalName::segment(tli, no, ca.seg_size));
        if let (Some((keep_from, _)), None) = (oldest, &cp.kept_all) {
            for f in ca.files {
                match f.name.segment_no_of_file(ca.seg_size) {
                    Some(no) if no < keep_from => {}
                    _ => continue,
                }
                if !dry_run && !delete_file(repo, f).await? {
                    report.retained += 1;
                    continue;
                }
                cp.removed += 1;
                cp.removed_bytes += f.meta.size;
            }
        }
        report.removed += cp.removed;
        report.removed_bytes += cp.removed_bytes;
        report.clusters.push(cp);
    }
    Ok(report)
}

/// Deletes every object of `f`; `false` when Object Lock kept one.
async fn delete_file(repo: &Repository, f: &Archived) -> Result<bool> {
    let mut all = true;
    for key in f.keys() {
        match repo.store().delete(key).await {
            Ok(()) => {}
            Err(Error::Retained { .. }) => all = false,
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

impl WalStatus {
    /// The figures as Prometheus gauges: per cluster the newest archived segment's time, the
    /// window's start, gaps and problems, the last hour's segments; the local backlog.
    pub fn to_prometheus(&self) -> String {
        let mut m = crate::metrics::Metrics::new();
        let repo = self.location.as_str();
        for c in &self.clusters {
            let id = c.cluster.to_string();
            let l = [("repository", repo), ("cluster", id.as_str())];
            if let Some(t) = c.newest_archived {
                m.gauge(
                    "lifeboat_wal_newest_archived_timestamp_seconds",
                    "When the newest WAL segment of the cluster reached the repository.",
                    &l,
                    t.timestamp() as f64,
                );
            }
            if let Some(w) = &c.window {
                m.gauge(
                    "lifeboat_wal_window_start_timestamp_seconds",
                    "The earliest moment a point-in-time restore can reach (end of the oldest base backup).",
                    &l,
                    w.from.timestamp() as f64,
                );
            }
            let gaps: usize = c.timelines.iter().map(|t| t.gaps.len()).sum();
            m.gauge(
                "lifeboat_wal_gaps",
                "Missing stretches of segments in the cluster's archived timelines.",
                &l,
                gaps as f64,
            );
            m.gauge(
                "lifeboat_wal_problems",
                "Timeline histories that disagree or cannot be followed.",
                &l,
                c.problems.len() as f64,
            );
            m.gauge(
                "lifeboat_wal_segments_last_hour",
                "Segments archived in the last hour.",
                &l,
                c.last_hour_segments as f64,
            );
            m.gauge(
                "lifeboat_wal_base_backups",
                "Base backups of the cluster in the repository.",
                &l,
                c.base_backups as f64,
            );
        }
        if let Some(b) = &self.backlog {
            let l = [("repository", repo)];
            m.gauge(
                "lifeboat_wal_backlog_segments",
                "WAL files PostgreSQL marked ready that are not archived yet.",
                &l,
                b.ready as f64,
            );
            m.gauge(
                "lifeboat_wal_backlog_bytes",
                "Bytes of WAL waiting to be archived.",
                &l,
                b.bytes as f64,
            );
            m.gauge(
                "lifeboat_wal_backlog_oldest_age_seconds",
                "How long the oldest WAL file waiting to be archived has waited.",
                &l,
                b.oldest_age_seconds.unwrap_or(0.0),
            );
        }
        let mut text = m.render();
        if let Some(st) = &self.stream {
            text.push_str(&st.to_prometheus());
        }
        text
    }
}
