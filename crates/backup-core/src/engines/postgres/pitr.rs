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

use super::base::{BaseFacts, is_base_backup, parse_lsn};
use super::wal::{TimelineStatus, status};
use crate::commands::restore::{ApplyOptions, restore_item};
use crate::engines::volume::restore::DirectorySink;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::manifest::{Item, Snapshot};
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

/// What to restore where.
#[derive(Debug, Clone)]
pub struct PitrOptions {
    /// The base backup item's name.
    pub item: String,
    /// Which snapshots may provide it (host, tags).
    pub filter: SnapshotFilter,
    pub pgdata: PathBuf,
    pub target: RecoveryTarget,
    /// Replace a non-empty data directory.
    pub force: bool,
    /// What the restored server runs to fetch WAL (`lifeboat-restore … wal fetch %f %p`).
    pub restore_command: String,
}

/// What [`apply`] would do, decided without touching anything.
#[derive(Debug, Clone, Serialize)]
pub struct PitrPlan {
    pub snapshot: SnapshotId,
    pub item: String,
    pub base: BaseFacts,
    /// When the base backup finished: the earliest moment it can be recovered to.
    pub base_finished: DateTime<Utc>,
    pub target: RecoveryTarget,
    /// The newest segment archived on the base backup's timeline.
    pub newest_wal: Option<String>,
    pub pgdata: PathBuf,
    pub pgdata_state: TargetState,
    /// Lines added to the restored `postgresql.auto.conf`.
    pub settings: Vec<String>,
}

/// Chooses the base backup for the target and checks the WAL archive reaches past it.
pub async fn plan(repo: &Repository, opts: &PitrOptions) -> Result<PitrPlan> {
    let snapshots = repo.snapshots().await?;
    let (snap, item) = choose_base(&snapshots, opts)?;
    let base = BaseFacts::of(item);
    let wal = status(repo, None).await?;
    let tli = base.timeline.unwrap_or(1);
    let line = wal.timelines.iter().find(|t| t.timeline == tli);
    if !matches!(opts.target, RecoveryTarget::Immediate) {
        check_chain(&base, line, &opts.item)?;
    }
    let pgdata_state = match std::fs::symlink_metadata(&opts.pgdata) {
        Err(_) => TargetState::Missing,
        Ok(_) if is_missing_or_empty(&opts.pgdata) => TargetState::Empty,
        Ok(_) => TargetState::Occupied,
    };
    Ok(PitrPlan {
        snapshot: snap.id,
        item: item.name.clone(),
        base_finished: item.finished,
        newest_wal: line.and_then(|l| l.newest.as_ref()).map(|n| n.to_string()),
        pgdata: opts.pgdata.clone(),
        pgdata_state,
        settings: settings(opts),
        target: opts.target.clone(),
        base,
    })
}

/// The newest base backup that can reach the target: finished before a target time, stopped
/// before a target LSN.
fn choose_base<'a>(
    snapshots: &'a [Snapshot],
    opts: &PitrOptions,
) -> Result<(&'a Snapshot, &'a Item)> {
    let bases: Vec<(&Snapshot, &Item)> = snapshots
        .iter()
        .filter(|s| opts.filter.selects(s))
        .filter_map(|s| {
            s.item(&opts.item)
                .filter(|i| is_base_backup(i))
                .map(|i| (s, i))
        })
        .collect();
    let fits = |i: &Item| match &opts.target {
        RecoveryTarget::Time(t) => i.finished <= *t,
        RecoveryTarget::Lsn(l) => {
            let stop = BaseFacts::of(i).stop_lsn.as_deref().and_then(parse_lsn);
            matches!((stop, parse_lsn(l)), (Some(s), Some(t)) if s <= t)
        }
        _ => true,
    };
    if let Some(found) = bases.iter().rev().find(|(_, i)| fits(i)) {
        return Ok(*found);
    }
    Err(match bases.first() {
        None => Error::Usage(format!(
            "no base backup named {} {} (make one with `lifeboat-backup run --pg-base {}=URL` or a postgres_base source)",
            opts.item,
            opts.filter.describe(),
            opts.item
        )),
        Some((_, oldest)) => Error::Usage(format!(
            "no base backup of {} ends before {}: the oldest finished {} (pick a later target)",
            opts.item,
            opts.target,
            oldest.finished.format("%Y-%m-%d %H:%M:%S UTC")
        )),
    })
}

/// Recovery replays segments in order and stops at the first one missing: a gap after the
/// base backup's start would end recovery short of the target without saying so.
fn check_chain(base: &BaseFacts, line: Option<&TimelineStatus>, item: &str) -> Result<()> {
    let Some(start) = base.start_wal.as_deref() else {
        return Ok(());
    };
    let Some(line) = line else {
        return Err(Error::Usage(format!(
            "base backup {item} needs WAL from {start} on timeline {}, and the archive has none: is archive_command set to `lifeboat-backup wal push %p`? (--immediate restores the base backup alone)",
            base.timeline.unwrap_or(1)
        )));
    };
    if let Some((a, b)) = line.gaps.iter().find(|(_, b)| b.as_str() >= start) {
        return Err(Error::Usage(format!(
            "the WAL archive has a gap after base backup {item} ({a} .. {b} missing): recovery would stop at {a}; pick a target before it, or --immediate"
        )));
    }
    Ok(())
}

fn settings(opts: &PitrOptions) -> Vec<String> {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let mut lines = vec![
        format!("restore_command = {}", quote(&opts.restore_command)),
        "archive_mode = off".to_string(),
    ];
    for (k, v) in opts.target.settings() {
        lines.push(format!("{k} = {}", quote(&v)));
    }
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
}

/// Unpacks the planned base backup into the data directory and writes the recovery settings.
pub async fn apply(repo: &Repository, plan: &PitrPlan, force: bool) -> Result<PitrReport> {
    if plan.pgdata_state == TargetState::Occupied && !force {
        return Err(Error::TargetNotEmpty {
            path: plan.pgdata.clone(),
        });
    }
    let snap = repo.load_snapshot(&plan.snapshot).await?;
    let item = snap.item(&plan.item).ok_or_else(|| Error::ItemNotFound {
        snapshot: snap.id,
        item: plan.item.clone(),
        available: snap.source_set().join(", "),
    })?;
    let sink = DirectorySink::create(&item.name, &plan.pgdata, force).await?;
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
            force: false,
            restore_command: "lifeboat-restore --config /etc/l.toml wal fetch %f %p".into(),
        };
        let t = DateTime::parse_from_rfc3339("2026-12-04T10:00:00.5Z")
            .unwrap()
            .to_utc();
        let s = settings(&opts(RecoveryTarget::Time(t)));
        assert_eq!(
            s[0],
            "restore_command = 'lifeboat-restore --config /etc/l.toml wal fetch %f %p'"
        );
        assert!(s.contains(&"archive_mode = off".to_string()));
        assert!(s.contains(&"recovery_target_time = '2026-12-04 10:00:00.500000+00'".to_string()));
        assert!(s.contains(&"recovery_target_action = 'promote'".to_string()));
        let latest = settings(&opts(RecoveryTarget::Latest));
        assert_eq!(latest.len(), 2, "{latest:?}");
        let name = settings(&opts(RecoveryTarget::Name("before 'it'".into())));
        assert!(name.contains(&"recovery_target_name = 'before ''it'''".to_string()));
    }
}
