//! Retention: which snapshots a policy keeps, and why. `plan` is pure: same input, same plan.
//!
//! Semantics follow restic's `forget`: within each group (host and source set by default),
//! snapshots are walked newest first; `keep_last N` keeps the N newest; `keep_hourly/daily/
//! weekly/monthly/yearly N` keep the newest snapshot of each of the N most recent hours/days/…
//! that have one; `keep_within D` keeps everything newer than `now - D`; `keep_tags` keeps
//! snapshots carrying any of those tags; protected snapshots are always kept. `keep_pitr D`
//! keeps, per PostgreSQL base backup item, the newest base backup that finished before
//! `now - D` (or the oldest one, when none is that old): with the WAL after it, every moment
//! of the window can be restored.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, FixedOffset, Timelike, Utc};
use serde::Serialize;

use crate::engines::postgres::base::is_base_backup;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::manifest::Snapshot;

/// How snapshots are grouped before the policy applies to each group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub sources: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            sources: true,
            tags: false,
        }
    }
}

/// A retention policy.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
    pub keep_pitr: Option<Duration>,
    pub keep_tags: Vec<String>,
    pub group_by: GroupBy,
    /// Offset used for calendar buckets (days, weeks…); UTC when unset.
    pub timezone: Option<FixedOffset>,
}

impl RetentionPolicy {
    /// Whether the policy has any keep rule at all.
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.keep_within.is_none()
            && self.keep_pitr.is_none()
            && self.keep_tags.is_empty()
    }
}

/// Parses `30d`, `48h`, `2w`, `1y` (365 days), `6mo` (30-day months), `90min` (or `90m`),
/// `45s`, and sums like `1d12h`.
/// A positive timeout such as "30s" or "5m"; the error names `what`.
pub fn parse_timeout(s: &str, what: &str) -> Result<std::time::Duration> {
    parse_duration(s)
        .ok()
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::Usage(format!(
                "{what} {s:?} is not a duration: write e.g. \"30s\" or \"5m\""
            ))
        })
}

pub fn parse_duration(s: &str) -> Result<Duration> {
    let err = || {
        Error::Usage(format!(
            "bad duration {s:?}: use e.g. 30d, 48h, 2w, 1y, 6mo, 90min"
        ))
    };
    let mut total = Duration::zero();
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    if chars.peek().is_none() {
        return Err(err());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: i64 = num.parse().map_err(|_| err())?;
        num.clear();
        total += match unit.as_str() {
            "y" => Duration::days(365 * n),
            "mo" => Duration::days(30 * n),
            "w" => Duration::weeks(n),
            "d" => Duration::days(n),
            "h" => Duration::hours(n),
            "min" | "m" => Duration::minutes(n),
            "s" => Duration::seconds(n),
            _ => return Err(err()),
        };
    }
    if !num.is_empty() {
        return Err(err());
    }
    Ok(total)
}

/// The decision for one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: DateTime<Utc>,
    pub host: String,
    pub sources: Vec<String>,
    pub tags: Vec<String>,
    pub keep: bool,
    /// Why it is kept ("daily 3 of 7", "within 48h", "protected"), or `["remove"]`.
    pub reasons: Vec<String>,
}

/// The decisions for one group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPlan {
    pub host: Option<String>,
    pub sources: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    /// Newest first.
    pub snapshots: Vec<Decision>,
}

/// What a policy keeps and removes.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionPlan {
    pub groups: Vec<GroupPlan>,
}

impl RetentionPlan {
    /// Snapshots to remove.
    pub fn remove(&self) -> Vec<SnapshotId> {
        self.groups
            .iter()
            .flat_map(|g| g.snapshots.iter().filter(|d| !d.keep).map(|d| d.id))
            .collect()
    }

    /// Snapshots kept.
    pub fn kept(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.snapshots)
            .filter(|d| d.keep)
            .count()
    }
}

type BucketFn = fn(DateTime<FixedOffset>) -> (i32, u32, u32, u32);

fn hour(t: DateTime<FixedOffset>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), t.hour())
}
fn day(t: DateTime<FixedOffset>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), t.day(), 0)
}
fn week(t: DateTime<FixedOffset>) -> (i32, u32, u32, u32) {
    let w = t.iso_week();
    (w.year(), w.week(), 0, 0)
}
fn month(t: DateTime<FixedOffset>) -> (i32, u32, u32, u32) {
    (t.year(), t.month(), 0, 0)
}
fn year(t: DateTime<FixedOffset>) -> (i32, u32, u32, u32) {
    (t.year(), 0, 0, 0)
}

/// Applies `policy` to `snapshots` at time `now`. `protected` snapshots are always kept.
/// Refuses (error) a policy that keeps nothing, or that would remove every snapshot of a group.
pub fn plan(
    policy: &RetentionPolicy,
    snapshots: &[Snapshot],
    protected: &BTreeSet<SnapshotId>,
    now: DateTime<Utc>,
) -> Result<RetentionPlan> {
    if policy.is_empty() {
        return Err(Error::Usage(
            "the retention policy keeps nothing: give at least one --keep-* rule".into(),
        ));
    }
    let mut out = Vec::new();
    for ((host, sources, tags), mut snaps) in groups(policy, snapshots) {
        snaps.sort_by(|a, b| b.time.cmp(&a.time).then(b.id.cmp(&a.id)));
        let reasons = reasons(policy, &snaps, protected, now);
        if !snaps.is_empty() && reasons.iter().all(|r| r.is_empty()) {
            return Err(Error::Usage(format!(
                "the policy would remove all {} snapshots of host {} / sources {}: refusing (keep at least one rule that matches, e.g. --keep-last 1)",
                snaps.len(),
                host.clone().unwrap_or_else(|| "*".into()),
                sources
                    .clone()
                    .map(|s| s.join(","))
                    .unwrap_or_else(|| "*".into())
            )));
        }
        let decisions = snaps
            .iter()
            .zip(reasons)
            .map(|(s, r)| Decision {
                id: s.id,
                time: s.time,
                host: s.host.clone(),
                sources: s.source_set(),
                tags: s.tags.clone(),
                keep: !r.is_empty(),
                reasons: if r.is_empty() {
                    vec!["remove".into()]
                } else {
                    r
                },
            })
            .collect();
        out.push(GroupPlan {
            host,
            sources,
            tags,
            snapshots: decisions,
        });
    }
    Ok(RetentionPlan { groups: out })
}

/// A group: host, sources and tags, each set only when the policy groups by it.
type GroupKey = (Option<String>, Option<Vec<String>>, Option<Vec<String>>);

fn groups<'a>(
    policy: &RetentionPolicy,
    snapshots: &'a [Snapshot],
) -> BTreeMap<GroupKey, Vec<&'a Snapshot>> {
    let mut groups: BTreeMap<GroupKey, Vec<&Snapshot>> = BTreeMap::new();
    for s in snapshots {
        let mut tags = s.tags.clone();
        tags.sort();
        let key = (
            policy.group_by.host.then(|| s.host.clone()),
            policy.group_by.sources.then(|| s.source_set()),
            policy.group_by.tags.then_some(tags),
        );
        groups.entry(key).or_default().push(s);
    }
    groups
}

/// Why each snapshot of a group (newest first) is kept; empty: removed.
fn reasons(
    policy: &RetentionPolicy,
    snaps: &[&Snapshot],
    protected: &BTreeSet<SnapshotId>,
    now: DateTime<Utc>,
) -> Vec<Vec<String>> {
    let tz = policy
        .timezone
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
    let rules: [(&str, Option<u32>, BucketFn); 5] = [
        ("hourly", policy.keep_hourly, hour),
        ("daily", policy.keep_daily, day),
        ("weekly", policy.keep_weekly, week),
        ("monthly", policy.keep_monthly, month),
        ("yearly", policy.keep_yearly, year),
    ];
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snaps.len()];
    // A snapshot the anomaly check flagged (an empty mount point backed up "successfully")
    // takes no keep_* slot: it must not push out the good ones it looks like.
    let flagged: Vec<Option<&str>> = snaps.iter().map(|s| is_flagged(s)).collect();
    let counted = || (0..snaps.len()).filter(|&i| flagged[i].is_none());
    if let Some(n) = policy.keep_last {
        for (k, i) in counted().take(n as usize).enumerate() {
            reasons[i].push(format!("last {} of {n}", k + 1));
        }
    }
    for (name, count, bucket) in rules {
        let Some(n) = count else { continue };
        let mut last = None;
        let mut kept = 0;
        for i in counted() {
            let s = snaps[i];
            if kept >= n {
                break;
            }
            let b = bucket(s.time.with_timezone(&tz));
            if last != Some(b) {
                last = Some(b);
                kept += 1;
                reasons[i].push(format!("{name} {kept} of {n}"));
            }
        }
    }
    keep_flagged(snaps, &flagged, &mut reasons);
    if let Some(w) = policy.keep_pitr {
        for (item, i) in pitr_keepers(snaps, now - w) {
            reasons[i].push(format!(
                "pitr window {} (base backup {item})",
                show_duration(w)
            ));
        }
    }
    for (i, s) in snaps.iter().enumerate() {
        if let Some(d) = policy.keep_within
            && s.time >= now - d
        {
            reasons[i].push(format!("within {}", show_duration(d)));
        }
        if let Some(t) = s.tags.iter().find(|t| policy.keep_tags.contains(t)) {
            reasons[i].push(format!("tag {t}"));
        }
        if protected.contains(&s.id) {
            reasons[i].push("protected".into());
        }
    }
    reasons
}

/// Why a snapshot takes no keep slot: an item flagged by the anomaly check, or a source that
/// failed in a partial run.
fn is_flagged(s: &Snapshot) -> Option<&'static str> {
    if s.is_incomplete() {
        return Some("incomplete (takes no keep slot)");
    }
    s.items
        .iter()
        .any(|i| !crate::anomaly::recorded(i).is_empty())
        .then_some("flagged by the anomaly check (takes no keep slot)")
}

/// Flagged snapshots stay while they are newer than the oldest snapshot the keep rules keep
/// (all of them while no good one is kept): evidence for as long as the good ones around it.
fn keep_flagged(snaps: &[&Snapshot], flagged: &[Option<&str>], reasons: &mut [Vec<String>]) {
    let oldest_kept = (0..snaps.len())
        .filter(|&i| flagged[i].is_none() && !reasons[i].is_empty())
        .map(|i| snaps[i].time)
        .min();
    for (i, s) in snaps.iter().enumerate() {
        if let Some(why) = flagged[i]
            && oldest_kept.is_none_or(|t| s.time >= t)
        {
            reasons[i].push(why.into());
        }
    }
}

/// Per base backup item: the snapshot whose base backup a restore to `cutoff` starts from
/// (the newest finished by then), or the oldest when none is that old.
fn pitr_keepers(snaps: &[&Snapshot], cutoff: DateTime<Utc>) -> Vec<(String, usize)> {
    let mut by_item: BTreeMap<&str, Vec<(DateTime<Utc>, usize)>> = BTreeMap::new();
    for (i, s) in snaps.iter().enumerate() {
        for item in s.items.iter().filter(|it| is_base_backup(it)) {
            by_item
                .entry(&item.name)
                .or_default()
                .push((item.finished, i));
        }
    }
    by_item
        .into_iter()
        .filter_map(|(name, bases)| {
            let before = bases.iter().filter(|(t, _)| *t <= cutoff).max();
            let keep = before.or_else(|| bases.iter().min())?;
            Some((name.to_string(), keep.1))
        })
        .collect()
}

fn show_duration(d: Duration) -> String {
    let s = d.num_seconds();
    match s {
        _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}min", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Snapshot;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn snap(n: u16, time: &str, host: &str, tags: &[&str]) -> Snapshot {
        let mut id = [0u8; 16];
        id[..2].copy_from_slice(&n.to_be_bytes());
        Snapshot {
            version: 1,
            id: SnapshotId(id),
            time: t(time),
            finished: t(time),
            host: host.into(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            program: "test".into(),
            items: Vec::new(),
            incomplete: Vec::new(),
        }
    }

    /// Daily snapshots at 02:00 UTC from 2026-01-01 to 2026-03-01 (60 days).
    fn daily() -> Vec<Snapshot> {
        let start = t("2026-01-01T02:00:00Z");
        (0..60u16)
            .map(|d| {
                let time = (start + Duration::days(d.into())).to_rfc3339();
                snap(d, &time, "db1", &[])
            })
            .collect()
    }

    /// Kept snapshot times (`YYYY-MM-DDTHH:MM`) with their reasons, newest first.
    fn kept(p: &RetentionPlan) -> Vec<(String, String)> {
        p.groups
            .iter()
            .flat_map(|g| &g.snapshots)
            .filter(|d| d.keep)
            .map(|d| {
                (
                    d.time.format("%Y-%m-%dT%H:%M").to_string(),
                    d.reasons.join("; "),
                )
            })
            .collect()
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy::default()
    }

    fn now() -> DateTime<Utc> {
        t("2026-03-01T12:00:00Z")
    }

    /// A base backup item named `pg` that finished half an hour after `s` started.
    fn with_base(mut s: Snapshot) -> Snapshot {
        s.items.push(crate::manifest::Item {
            name: "pg".into(),
            kind: crate::manifest::ItemKind::Postgres,
            format: crate::engines::postgres::base::FORMAT.into(),
            size: 1,
            sha256: String::new(),
            digest: Default::default(),
            head: None,
            chunks: Vec::new(),
            catalog: None,
            started: s.time,
            finished: s.time + Duration::minutes(30),
            facts: Default::default(),
        });
        s
    }

    #[test]
    fn the_pitr_window_keeps_the_base_backup_its_start_needs() {
        let snaps: Vec<Snapshot> = daily().into_iter().map(with_base).collect();
        let policy = RetentionPolicy {
            keep_last: Some(1),
            keep_pitr: Some(Duration::days(3)),
            ..policy()
        };
        let p = plan(&policy, &snaps, &BTreeSet::new(), now()).unwrap();
        // The window starts 2026-02-26 12:00; the base backup finished at 02:30 that day is
        // the one a restore to that moment starts from.
        assert_eq!(
            kept(&p),
            [
                ("2026-03-01T02:00", "last 1 of 1"),
                ("2026-02-26T02:00", "pitr window 3d (base backup pg)"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // A window older than every base backup keeps the oldest; snapshots without a base
        // backup are not kept by it.
        let long = RetentionPolicy {
            keep_pitr: Some(Duration::days(365)),
            ..policy.clone()
        };
        let p = plan(&long, &snaps, &BTreeSet::new(), now()).unwrap();
        assert_eq!(kept(&p)[1].0, "2026-01-01T02:00");
        let p = plan(&policy, &daily(), &BTreeSet::new(), now()).unwrap();
        assert_eq!(p.kept(), 1);
    }

    #[test]
    fn keep_daily_7_over_two_months() {
        let p = plan(
            &RetentionPolicy {
                keep_daily: Some(7),
                ..policy()
            },
            &daily(),
            &BTreeSet::new(),
            now(),
        )
        .unwrap();
        let want = [
            ("2026-03-01T02:00", "daily 1 of 7"),
            ("2026-02-28T02:00", "daily 2 of 7"),
            ("2026-02-27T02:00", "daily 3 of 7"),
            ("2026-02-26T02:00", "daily 4 of 7"),
            ("2026-02-25T02:00", "daily 5 of 7"),
            ("2026-02-24T02:00", "daily 6 of 7"),
            ("2026-02-23T02:00", "daily 7 of 7"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(p.remove().len(), 53);
    }

    #[test]
    fn last_weekly_monthly_combined() {
        let pol = RetentionPolicy {
            keep_last: Some(3),
            keep_weekly: Some(4),
            keep_monthly: Some(3),
            ..policy()
        };
        let p = plan(&pol, &daily(), &BTreeSet::new(), now()).unwrap();
        // 2026-03-01 is a Sunday: ISO weeks end on Mar 1, Feb 22, Feb 15, Feb 8.
        let want = [
            (
                "2026-03-01T02:00",
                "last 1 of 3; weekly 1 of 4; monthly 1 of 3",
            ),
            ("2026-02-28T02:00", "last 2 of 3; monthly 2 of 3"),
            ("2026-02-27T02:00", "last 3 of 3"),
            ("2026-02-22T02:00", "weekly 2 of 4"),
            ("2026-02-15T02:00", "weekly 3 of 4"),
            ("2026-02-08T02:00", "weekly 4 of 4"),
            ("2026-01-31T02:00", "monthly 3 of 3"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn hourly_with_gaps_keeps_the_newest_of_each_hour() {
        let times = [
            "10:00", "10:30", "11:00", "13:00", "14:15", "14:45", "16:00",
        ];
        let snaps: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(i, h)| snap(i as u16, &format!("2026-02-10T{h}:00Z"), "h", &[]))
            .collect();
        let p = plan(
            &RetentionPolicy {
                keep_hourly: Some(5),
                ..policy()
            },
            &snaps,
            &BTreeSet::new(),
            now(),
        )
        .unwrap();
        let want = [
            ("2026-02-10T16:00", "hourly 1 of 5"),
            ("2026-02-10T14:45", "hourly 2 of 5"),
            ("2026-02-10T13:00", "hourly 3 of 5"),
            ("2026-02-10T11:00", "hourly 4 of 5"),
            ("2026-02-10T10:30", "hourly 5 of 5"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        let removed: Vec<_> = p.groups[0]
            .snapshots
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.time.format("%H:%M").to_string())
            .collect();
        assert_eq!(removed, ["14:15", "10:00"]);
    }

    #[test]
    fn hosts_are_separate_groups() {
        let snaps = vec![
            snap(1, "2026-02-01T00:00:00Z", "web", &[]),
            snap(2, "2026-02-02T00:00:00Z", "web", &[]),
            snap(3, "2026-02-03T00:00:00Z", "db", &[]),
            snap(4, "2026-02-04T00:00:00Z", "db", &[]),
            snap(5, "2026-02-05T00:00:00Z", "db", &[]),
        ];
        let p = plan(
            &RetentionPolicy {
                keep_last: Some(1),
                ..policy()
            },
            &snaps,
            &BTreeSet::new(),
            now(),
        )
        .unwrap();
        let mut k: Vec<_> = p
            .groups
            .iter()
            .flat_map(|g| &g.snapshots)
            .filter(|d| d.keep)
            .map(|d| (d.host.clone(), d.time.format("%d").to_string()))
            .collect();
        k.sort();
        assert_eq!(
            k,
            [
                ("db".to_string(), "05".to_string()),
                ("web".to_string(), "02".to_string())
            ]
        );
        // Grouping off: one group, one snapshot kept.
        let all = RetentionPolicy {
            keep_last: Some(1),
            group_by: GroupBy {
                host: false,
                sources: false,
                tags: false,
            },
            ..policy()
        };
        assert_eq!(
            plan(&all, &snaps, &BTreeSet::new(), now()).unwrap().kept(),
            1
        );
    }

    #[test]
    fn protected_and_tagged_snapshots_stay() {
        let snaps = vec![
            snap(1, "2026-02-01T00:00:00Z", "h", &[]),
            snap(2, "2026-02-02T00:00:00Z", "h", &["release"]),
            snap(3, "2026-02-03T00:00:00Z", "h", &[]),
            snap(4, "2026-02-04T00:00:00Z", "h", &["nightly"]),
        ];
        let protected: BTreeSet<_> = [snaps[0].id].into();
        let pol = RetentionPolicy {
            keep_last: Some(1),
            keep_tags: vec!["release".into()],
            ..policy()
        };
        let p = plan(&pol, &snaps, &protected, now()).unwrap();
        let want = [
            ("2026-02-04T00:00", "last 1 of 1"),
            ("2026-02-02T00:00", "tag release"),
            ("2026-02-01T00:00", "protected"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(p.remove(), [snaps[2].id]);
        assert_eq!(p.groups[0].snapshots[1].reasons, ["remove"]);
    }

    #[test]
    fn a_flagged_snapshot_takes_no_keep_slot() {
        let mut snaps: Vec<Snapshot> = daily().into_iter().skip(56).map(with_base).collect();
        // The newest two were flagged (an empty mount point two nights running).
        for s in snaps.iter_mut().rev().take(2) {
            s.items[0].facts.insert(
                crate::anomaly::FACT.into(),
                serde_json::json!(["51 files before, 0 now"]),
            );
        }
        let pol = RetentionPolicy {
            keep_last: Some(1),
            ..policy()
        };
        let p = plan(&pol, &snaps, &BTreeSet::new(), now()).unwrap();
        let want = [
            (
                "2026-03-01T02:00",
                "flagged by the anomaly check (takes no keep slot)",
            ),
            (
                "2026-02-28T02:00",
                "flagged by the anomaly check (takes no keep slot)",
            ),
            ("2026-02-27T02:00", "last 1 of 1"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
        assert_eq!(
            p.remove(),
            [snaps[0].id],
            "the good one before is what goes"
        );
    }

    #[test]
    fn keep_within_is_relative_to_now() {
        let snaps = vec![
            snap(1, "2026-02-25T08:00:00Z", "h", &[]),
            snap(2, "2026-02-27T10:00:00Z", "h", &[]),
            snap(3, "2026-02-27T13:00:00Z", "h", &[]),
            snap(4, "2026-03-01T11:00:00Z", "h", &[]),
        ];
        let p = plan(
            &RetentionPolicy {
                keep_within: Some(parse_duration("48h").unwrap()),
                ..policy()
            },
            &snaps,
            &BTreeSet::new(),
            now(),
        )
        .unwrap();
        let want = [
            ("2026-03-01T11:00", "within 2d"),
            ("2026-02-27T13:00", "within 2d"),
        ];
        assert_eq!(kept(&p), want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn calendar_buckets_follow_the_configured_offset() {
        let snaps = vec![
            snap(1, "2026-02-28T12:00:00Z", "h", &[]),
            snap(2, "2026-03-01T21:30:00Z", "h", &[]),
            snap(3, "2026-03-01T22:30:00Z", "h", &[]),
        ];
        let utc = plan(
            &RetentionPolicy {
                keep_daily: Some(2),
                ..policy()
            },
            &snaps,
            &BTreeSet::new(),
            now(),
        )
        .unwrap();
        assert_eq!(
            kept(&utc).iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
            ["2026-03-01T22:30", "2026-02-28T12:00"]
        );
        let plus2 = RetentionPolicy {
            keep_daily: Some(2),
            timezone: Some(FixedOffset::east_opt(2 * 3600).unwrap()),
            ..policy()
        };
        let local = plan(&plus2, &snaps, &BTreeSet::new(), now()).unwrap();
        assert_eq!(
            kept(&local)
                .iter()
                .map(|k| k.0.as_str())
                .collect::<Vec<_>>(),
            ["2026-03-01T22:30", "2026-03-01T21:30"]
        );
    }

    #[test]
    fn refuses_policies_that_keep_nothing() {
        assert!(
            plan(&policy(), &daily(), &BTreeSet::new(), now()).is_err(),
            "empty policy"
        );
        let e = plan(
            &RetentionPolicy {
                keep_within: Some(Duration::hours(1)),
                ..policy()
            },
            &daily(),
            &BTreeSet::new(),
            now(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("would remove all 60 snapshots"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_duration("1d12h").unwrap(), Duration::hours(36));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("6mo").unwrap(), Duration::days(180));
        assert_eq!(parse_duration("90min").unwrap(), Duration::minutes(90));
        for bad in ["", "d", "10", "5x"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
