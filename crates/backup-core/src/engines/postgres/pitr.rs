//! Point-in-time recovery: the base backup a target needs, unpacked into a data directory,
//! with the settings that make PostgreSQL replay the WAL archive up to the target.
//!
//! [`plan`] chooses the base backup and checks, touching nothing, that the archive can carry
//! it to the target (no gap in its timeline's WAL after the backup's start); [`apply`] unpacks
//! the backup through the same verified, rename-into-place path as every directory restore,
//! then writes `recovery.signal` and the recovery settings. `archive_mode = off` keeps the
//! restored server from archiving into the repository it was restored from.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::base::{BaseBackup, BaseFacts, base_backups};
use super::wal::name::{ClusterId, WalName, parse_lsn};
use super::wal::status::{Archive, ClusterArchive};
use super::wal::timeline::{Timelines, describe, needed};
use crate::commands::restore::{ApplyOptions, restore_item};
use crate::engines::volume::restore::DirectorySink;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::repository::{Repository, SnapshotFilter};
use crate::sink::{TargetState, is_missing_or_empty};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum RecoveryTarget {
    /// The end of the archive.
    Latest,
    /// The end of the base backup (consistency reached).
    Immediate,
    Time(DateTime<Utc>),
    /// `X/Y`.
    Lsn(String),
    Xid(String),
    /// A restore point made with `pg_create_restore_point`.
    Name(String),
}

impl RecoveryTarget {
    /// The `recovery_target*` settings for PostgreSQL.
    fn settings(&self) -> Vec<(&'static str, String)> {
        match self {
            RecoveryTarget::Latest => vec![],
            RecoveryTarget::Immediate => vec![("recovery_target", "immediate".into())],
            RecoveryTarget::Time(t) => vec![(
                "recovery_target_time",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            )],
            RecoveryTarget::Lsn(l) => vec![("recovery_target_lsn", l.clone())],
            RecoveryTarget::Xid(x) => vec![("recovery_target_xid", x.clone())],
            RecoveryTarget::Name(n) => vec![("recovery_target_name", n.clone())],
        }
    }
}

impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archive"),
            RecoveryTarget::Immediate => f.write_str("the end of the base backup"),
            RecoveryTarget::Time(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S UTC")),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
            RecoveryTarget::Name(n) => write!(f, "restore point {n}"),
        }
    }
}

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum TimelineTarget {
    /// The newest timeline the archive has a history for (PostgreSQL's `latest`).
    Latest,
    /// The base backup's own timeline.
    Current,
    Id(u32),
}

impl std::str::FromStr for TimelineTarget {
    type Err = Error;
    fn from_str(s: &str) -> Result<TimelineTarget> {
        match s {
            "latest" => Ok(TimelineTarget::Latest),
            "current" => Ok(TimelineTarget::Current),
            n => n.parse().map(TimelineTarget::Id).map_err(|_| {
                Error::Usage(format!(
                    "--timeline {n:?}: give a timeline number, latest or current"
                ))
            }),
        }
    }
}

/// What to restore where.
#[derive(Debug, Clone)]
pub struct PitrOptions {
    /// The base backup item's name.
    pub item: String,
    /// Which snapshots may provide it (host, tags).
    pub filter: SnapshotFilter,
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    pub timeline: TimelineTarget,
    /// Replace a non-empty data directory.
    pub force: bool,
    /// What the restored server runs to fetch WAL (`lifeboat-restore … wal fetch %f %p`);
    /// `{cluster}` is replaced by the cluster's system identifier.
    pub restore_command: String,
    /// The restored server becomes the primary and archives into the repository on a new
    /// timeline (default: `archive_mode = off`, a copy never writes into the archive).
    pub keep_archiving: bool,
}

/// What [`apply`] would do, decided without touching anything.
#[derive(Debug, Clone, Serialize)]
pub struct PitrPlan {
    pub snapshot: SnapshotId,
    pub item: String,
    pub base: BaseFacts,
    pub cluster: Option<ClusterId>,
    /// When the base backup finished: the earliest moment it can be recovered to.
    pub base_finished: DateTime<Utc>,
    pub target: RecoveryTarget,
    /// The timeline recovery follows, and its path from the base backup's.
    pub timeline: u32,
    pub path: String,
    /// The newest segment archived on that timeline, and when.
    pub newest_wal: Option<String>,
    pub newest_archived: Option<DateTime<Utc>>,
    /// Archived segments on the path from the base backup on: what replay reads at most.
    pub replay_segments: usize,
    pub replay_bytes: u64,
    pub pgdata: PathBuf,
    pub pgdata_state: TargetState,
    /// Lines added to the restored `postgresql.auto.conf`.
    pub settings: Vec<String>,
    /// What the operator should know (a target past the newest archived WAL…).
    pub warnings: Vec<String>,
}

/// Chooses the base backup and timeline for the target and checks the WAL archive carries
/// the one to the other, touching nothing.
pub async fn plan(repo: &Repository, opts: &PitrOptions) -> Result<PitrPlan> {
    let snapshots = repo.snapshots().await?;
    let all = base_backups(&snapshots);
    let named: Vec<&BaseBackup> = all
        .iter()
        .filter(|b| b.item.name == opts.item && opts.filter.selects(b.snapshot))
        .collect();
    let Some(newest) = named.last() else {
        return Err(Error::Usage(format!(
            "no base backup named {} {} (make one with `lifeboat-backup run --pg-base {}=URL` or a postgres_base source)",
            opts.item,
            opts.filter.describe(),
            opts.item
        )));
    };
    let cluster = newest.cluster;
    let mine: Vec<&BaseBackup> = named.into_iter().filter(|b| b.cluster == cluster).collect();
    let mut archive = Archive::list(repo).await?;
    archive.attribute(&all);
    let ca = cluster.map(|c| ClusterArchive::of(&archive, c, &all));
    let timelines = match &ca {
        Some(ca) => ca.timelines(repo).await?.0,
        None => Timelines::new(),
    };
    let (chosen, tli) = choose(&mine, &timelines, opts)?;
    let reached = match (&ca, &opts.target) {
        (_, RecoveryTarget::Immediate) | (None, _) => Reached::default(),
        (Some(ca), t) => check_chain(ca, chosen, &timelines, tli, t, &opts.item)?,
    };
    let mut warnings = Vec::new();
    if let (RecoveryTarget::Time(t), Some(newest)) = (&opts.target, reached.newest_archived)
        && *t > newest
    {
        warnings.push(format!(
            "the newest WAL on timeline {tli} was archived {}; recovery to a later moment fails if no commit after the target reached the archive",
            newest.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    let path = timelines
        .reach(
            chosen.facts.timeline.unwrap_or(1),
            chosen.facts.stop().unwrap_or_default(),
            tli,
        )
        .map(|p| describe(&p))
        .unwrap_or_else(|_| tli.to_string());
    Ok(PitrPlan {
        snapshot: chosen.snapshot.id,
        item: chosen.item.name.clone(),
        base_finished: chosen.item.finished,
        cluster,
        target: opts.target.clone(),
        timeline: tli,
        path,
        newest_wal: reached.newest.map(|n| n.to_string()),
        newest_archived: reached.newest_archived,
        replay_segments: reached.segments,
        replay_bytes: reached.segments as u64 * chosen.facts.segment_size(),
        pgdata: opts.pgdata.clone(),
        pgdata_state: target_state(&opts.pgdata),
        settings: settings(opts, cluster, tli),
        warnings,
        base: chosen.facts.clone(),
    })
}

fn target_state(pgdata: &Path) -> TargetState {
    match std::fs::symlink_metadata(pgdata) {
        Err(_) => TargetState::Missing,
        Ok(_) if is_missing_or_empty(pgdata) => TargetState::Empty,
        Ok(_) => TargetState::Occupied,
    }
}

/// The newest base backup that reaches the target — on the target timeline's history, and
/// finished before a target time or stopped before a target LSN — and the timeline.
fn choose<'a, 'b>(
    bases: &[&'b BaseBackup<'a>],
    timelines: &Timelines,
    opts: &PitrOptions,
) -> Result<(&'b BaseBackup<'a>, u32)> {
    let fits = |b: &BaseBackup| match &opts.target {
        RecoveryTarget::Time(t) => b.item.finished <= *t,
        RecoveryTarget::Lsn(l) => {
            matches!((b.facts.stop(), parse_lsn(l)), (Some(s), Some(t)) if s <= t)
        }
        _ => true,
    };
    let timeline_of = |b: &BaseBackup| match opts.timeline {
        TimelineTarget::Latest => timelines.newest().max(b.facts.timeline.unwrap_or(1)),
        TimelineTarget::Current => b.facts.timeline.unwrap_or(1),
        TimelineTarget::Id(n) => n,
    };
    let mut refusals = Vec::new();
    for b in bases.iter().rev() {
        let tli = timeline_of(b);
        if !fits(b) {
            continue;
        }
        let btl = b.facts.timeline.unwrap_or(1);
        match timelines.reach(btl, b.facts.stop().unwrap_or_default(), tli) {
            Ok(_) => return Ok((b, tli)),
            Err(why) => refusals.push(format!(
                "base backup of snapshot {} (timeline {btl}): {why}",
                b.snapshot.id.short()
            )),
        }
    }
    if let Some(first) = refusals.first() {
        return Err(Error::Usage(format!(
            "no base backup of {} can recover to timeline {}: {first}{}; pick another --timeline (wal status lists them), or take a base backup on it",
            opts.item,
            timeline_of(bases[bases.len() - 1]),
            if refusals.len() > 1 {
                format!(" (and {} older ones likewise)", refusals.len() - 1)
            } else {
                String::new()
            }
        )));
    }
    let oldest = bases[0];
    Err(Error::Usage(format!(
        "no base backup of {} ends before {}: the oldest finished {} (pick a later target)",
        opts.item,
        opts.target,
        oldest.item.finished.format("%Y-%m-%d %H:%M:%S UTC")
    )))
}

/// What the archive offers a recovery along its path.
#[derive(Debug, Default)]
struct Reached {
    newest: Option<WalName>,
    newest_archived: Option<DateTime<Utc>>,
    segments: usize,
}

/// Recovery replays segments in order and stops at the first one missing: a gap on the path
/// would end recovery short of the target without saying so, so it is refused here.
fn check_chain(
    ca: &ClusterArchive<'_>,
    base: &BaseBackup<'_>,
    timelines: &Timelines,
    tli: u32,
    target: &RecoveryTarget,
    item: &str,
) -> Result<Reached> {
    let upto = match target {
        RecoveryTarget::Lsn(l) => parse_lsn(l),
        _ => None,
    };
    match ca.first_missing(base, timelines, tli, upto) {
        Err(why) => return Err(Error::Usage(why)),
        Ok(Some(missing)) => {
            return Err(Error::Usage(format!(
                "the WAL archive lacks {missing}, which recovery from base backup {item} (snapshot {}) to {target} on timeline {tli} needs: recovery would stop there; pick a target before it, or --immediate (check names every gap)",
                base.snapshot.id.short()
            )));
        }
        Ok(None) => {}
    }
    let (Some(start), Some(btl)) = (base.facts.start(), base.facts.timeline) else {
        return Ok(Reached::default());
    };
    let path = timelines
        .reach(btl, base.facts.stop().unwrap_or_default(), tli)
        .map_err(Error::Usage)?;
    let segs = ca.segments();
    let mut reached = Reached::default();
    for (t, first, last) in needed(&path, start, ca.seg_size) {
        let on = segs.get(&t).into_iter().flatten();
        reached.segments += on
            .filter(|n| **n >= first && last.is_none_or(|l| **n <= l))
            .count();
    }
    let newest = ca
        .files
        .iter()
        .filter(|f| f.name.is_segment() && f.name.timeline() == tli)
        .max_by(|a, b| a.name.cmp(&b.name));
    reached.newest = newest.map(|f| f.name.clone());
    reached.newest_archived = newest.and_then(|f| f.meta.modified);
    if reached.segments == 0 && !matches!(target, RecoveryTarget::Lsn(_)) {
        return Err(Error::Usage(format!(
            "the archive has no WAL of cluster {} after base backup {item} (start {}): is archive_command set to `lifeboat-backup wal push %p`? (--immediate restores the base backup alone)",
            ca.cluster,
            base.facts.start_wal.as_deref().unwrap_or("?")
        )));
    }
    Ok(reached)
}

fn settings(opts: &PitrOptions, cluster: Option<ClusterId>, tli: u32) -> Vec<String> {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let command = opts.restore_command.replace(
        "{cluster}",
        &cluster.map(|c| c.to_string()).unwrap_or_default(),
    );
    let mut lines = vec![format!("restore_command = {}", quote(&command))];
    if !opts.keep_archiving {
        lines.push("archive_mode = off".to_string());
    }
    for (k, v) in opts.target.settings() {
        lines.push(format!("{k} = {}", quote(&v)));
    }
    lines.push(format!("recovery_target_timeline = '{tli}'"));
    if !matches!(opts.target, RecoveryTarget::Latest) {
        lines.push("recovery_target_action = 'promote'".to_string());
    }
    lines
}

/// What [`apply`] did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrReport {
    pub snapshot: SnapshotId,
    pub item: String,
    pub bytes: u64,
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    pub timeline: u32,
}

/// Unpacks the planned base backup into the data directory and writes the recovery settings.
pub async fn apply(repo: &Repository, plan: &PitrPlan, force: bool) -> Result<PitrReport> {
    if plan.pgdata_state == TargetState::Occupied && !force {
        return Err(Error::TargetNotEmpty {
            path: plan.pgdata.clone(),
        });
    }
    let snap = repo.load_snapshot(&plan.snapshot).await?;
    let item = snap.require(&plan.item)?;
    let sink = DirectorySink::create(&item.name, &plan.pgdata, force, false).await?;
    restore_item(
        repo,
        snap.id,
        item,
        Box::new(sink),
        &ApplyOptions::default(),
    )
    .await?;
    write_recovery(&plan.pgdata, &plan.settings).map_err(|e| {
        Error::io(
            format!(
                "writing the recovery settings into {}",
                plan.pgdata.display()
            ),
            e,
        )
    })?;
    Ok(PitrReport {
        snapshot: snap.id,
        item: item.name.clone(),
        bytes: item.size,
        pgdata: plan.pgdata.clone(),
        target: plan.target.clone(),
        timeline: plan.timeline,
    })
}

/// Appends the settings (later lines win over the backed-up ones), creates `recovery.signal`,
/// and gives the directory the mode and owner PostgreSQL insists on.
fn write_recovery(pgdata: &Path, settings: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&conf)?;
    writeln!(f, "\n# written by lifeboat-restore pitr")?;
    for line in settings {
        writeln!(f, "{line}")?;
    }
    f.sync_all()?;
    std::fs::write(pgdata.join("recovery.signal"), b"")?;
    // The cluster's files came out of the tar with their owner; the directory and the files
    // written here take the same.
    let owner = std::fs::metadata(pgdata.join("PG_VERSION"))?;
    for p in [pgdata.to_path_buf(), conf, pgdata.join("recovery.signal")] {
        std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid()))?;
    }
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_settings_for_each_target() {
        let opts = |target| PitrOptions {
            item: "pg".into(),
            filter: SnapshotFilter::default(),
            pgdata: "/x".into(),
            target,
            timeline: TimelineTarget::Latest,
            force: false,
            restore_command:
                "lifeboat-restore --config /etc/l.toml wal fetch --cluster {cluster} %f %p".into(),
            keep_archiving: false,
        };
        let c = Some(ClusterId(7));
        let t = DateTime::parse_from_rfc3339("2026-12-04T10:00:00.5Z")
            .unwrap()
            .to_utc();
        let s = settings(&opts(RecoveryTarget::Time(t)), c, 2);
        assert_eq!(
            s[0],
            "restore_command = 'lifeboat-restore --config /etc/l.toml wal fetch --cluster 7 %f %p'"
        );
        assert!(s.contains(&"recovery_target_timeline = '2'".to_string()));
        assert!(s.contains(&"archive_mode = off".to_string()));
        assert!(s.contains(&"recovery_target_time = '2026-12-04 10:00:00.500000+00'".to_string()));
        assert!(s.contains(&"recovery_target_action = 'promote'".to_string()));
        let latest = settings(&opts(RecoveryTarget::Latest), c, 1);
        assert_eq!(latest.len(), 3, "{latest:?}");
        let primary = PitrOptions {
            keep_archiving: true,
            ..opts(RecoveryTarget::Latest)
        };
        assert!(
            !settings(&primary, c, 1)
                .iter()
                .any(|l| l.starts_with("archive_mode"))
        );
        let name = settings(&opts(RecoveryTarget::Name("before 'it'".into())), c, 1);
        assert!(name.contains(&"recovery_target_name = 'before ''it'''".to_string()));
    }
}
