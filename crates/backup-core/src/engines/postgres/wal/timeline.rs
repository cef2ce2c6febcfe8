//! Timelines: the history files a promotion writes, which timeline descends from which and
//! where it branched off, and the segments a recovery along a timeline's history reads.
//!
//! PostgreSQL reads segment `s` from the newest timeline of the target's history that had
//! begun by `s` (a new timeline's first segment starts as a copy of its parent's), so a
//! recovery from a base backup on timeline `B` to timeline `T` needs, for each timeline of
//! `T`'s history from `B` on, the segments from where it begins (or the backup starts) up to
//! where the next one begins; and a base backup can reach `T` only if `B` is in `T`'s history
//! and the backup ended before `T`'s line left `B` (else: "requested timeline is not a child
//! of this server's history").

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::name::{WalName, format_lsn, segment_of};

/// One ancestor in a history file: timeline `parent` ended (the child began) at `switchpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ancestor {
    pub timeline: u32,
    pub switchpoint: u64,
}

/// Parses a `TTTTTTTT.history` file: one `parentTLI<TAB>switchpoint<TAB>reason` line per
/// ancestor, oldest first; `#` comments and blank lines are skipped.
pub fn parse_history(text: &str) -> Result<Vec<Ancestor>, String> {
    let mut out: Vec<Ancestor> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            return Err(format!("line {line:?} has no switchpoint"));
        };
        let timeline: u32 = tli
            .parse()
            .map_err(|_| format!("{tli:?} is not a timeline"))?;
        let switchpoint =
            super::name::parse_lsn(lsn).ok_or_else(|| format!("{lsn:?} is not an LSN"))?;
        if let Some(prev) = out.last()
            && (timeline <= prev.timeline || switchpoint < prev.switchpoint)
        {
            return Err(format!(
                "timeline {timeline} at {lsn} does not follow timeline {} at {}",
                prev.timeline,
                format_lsn(prev.switchpoint)
            ));
        }
        out.push(Ancestor {
            timeline,
            switchpoint,
        });
    }
    Ok(out)
}

/// One stretch of a recovery's path: WAL of `timeline` from `begin` up to `end` (exclusive;
/// `None`: as far as the timeline goes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub timeline: u32,
    pub begin: u64,
    pub end: Option<u64>,
}

/// The timelines of one cluster's archive: each timeline's ancestors, from its history file.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    histories: BTreeMap<u32, Vec<Ancestor>>,
}

impl Timelines {
    /// Timeline 1 has no history; others are added from their history files.
    pub fn new() -> Timelines {
        Timelines::default()
    }

    pub fn add(&mut self, timeline: u32, ancestors: Vec<Ancestor>) {
        self.histories.insert(timeline, ancestors);
    }

    /// Whether the history of `timeline` is known (timeline 1 always is).
    pub fn knows(&self, timeline: u32) -> bool {
        timeline == 1 || self.histories.contains_key(&timeline)
    }

    /// Timelines whose history is known, oldest first.
    pub fn known(&self) -> Vec<u32> {
        std::iter::once(1)
            .chain(self.histories.keys().copied().filter(|t| *t != 1))
            .collect()
    }

    /// The newest timeline whose history is known.
    pub fn newest(&self) -> u32 {
        self.histories.keys().copied().max().unwrap_or(1).max(1)
    }

    /// The path of `timeline` from its first ancestor: each timeline with where it begins
    /// and ends.
    pub fn path(&self, timeline: u32) -> Option<Vec<Span>> {
        let ancestors = if timeline == 1 {
            &[][..]
        } else {
            self.histories.get(&timeline)?.as_slice()
        };
        let mut spans = Vec::new();
        let mut begin = 0;
        for a in ancestors {
            spans.push(Span {
                timeline: a.timeline,
                begin,
                end: Some(a.switchpoint),
            });
            begin = a.switchpoint;
        }
        spans.push(Span {
            timeline,
            begin,
            end: None,
        });
        Some(spans)
    }

    /// The part of `target`'s path a recovery from a base backup on `base_timeline` (ending
    /// at `base_stop`) follows, or why it cannot.
    pub fn reach(
        &self,
        base_timeline: u32,
        base_stop: u64,
        target: u32,
    ) -> Result<Vec<Span>, String> {
        // A base backup's own timeline needs no history to be followed from the backup on.
        if target == base_timeline && !self.knows(target) {
            return Ok(vec![Span {
                timeline: target,
                begin: 0,
                end: None,
            }]);
        }
        let path = self.path(target).ok_or_else(|| {
            format!(
                "the archive has no history file for timeline {target} ({})",
                WalName::history(target)
            )
        })?;
        let at = path.iter().position(|s| s.timeline == base_timeline).ok_or_else(|| {
            format!(
                "timeline {target} does not descend from timeline {base_timeline} (its history: {})",
                describe(&path)
            )
        })?;
        if let Some(end) = path[at].end
            && base_stop > end
        {
            return Err(format!(
                "timeline {target} branched off timeline {base_timeline} at {}, before the base backup ended ({})",
                format_lsn(end),
                format_lsn(base_stop)
            ));
        }
        Ok(path[at..].to_vec())
    }

    /// Consistency of the histories with each other and with the archived segments: a
    /// timeline's history must extend its parent's, and a timeline with segments needs a
    /// history file to be followed.
    pub fn problems(&self, segment_timelines: &BTreeSet<u32>) -> Vec<String> {
        let mut out = Vec::new();
        for (tli, ancestors) in &self.histories {
            let Some(last) = ancestors.last() else {
                out.push(format!(
                    "{} lists no parent timeline",
                    WalName::history(*tli)
                ));
                continue;
            };
            if last.timeline >= *tli {
                out.push(format!(
                    "{} names timeline {} as its parent",
                    WalName::history(*tli),
                    last.timeline
                ));
            }
            if let Some(parent) = self.histories.get(&last.timeline)
                && parent.as_slice() != &ancestors[..ancestors.len() - 1]
            {
                out.push(format!(
                    "{} does not continue {}: the two histories disagree",
                    WalName::history(*tli),
                    WalName::history(last.timeline)
                ));
            }
        }
        for tli in segment_timelines {
            if !self.knows(*tli) {
                out.push(format!(
                    "timeline {tli} has segments but no history file ({}): recovery cannot follow it",
                    WalName::history(*tli)
                ));
            }
        }
        out
    }
}

/// `1 until 0/5000000, then 2`.
pub fn describe(path: &[Span]) -> String {
    path.iter()
        .map(|s| match s.end {
            Some(e) => format!("{} until {}", s.timeline, format_lsn(e)),
            None => s.timeline.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// The segments a recovery along `path` reads, from `start` (the base backup's start LSN):
/// per timeline, the first and last segment number (`None` as last: as far as the archive
/// goes).
pub fn needed(path: &[Span], start: u64, seg_size: u64) -> Vec<(u32, u64, Option<u64>)> {
    let first = segment_of(start, seg_size);
    let mut out = Vec::new();
    for (i, span) in path.iter().enumerate() {
        let from = segment_of(span.begin, seg_size).max(first);
        match path.get(i + 1) {
            // Segment `segment_of(next.begin)` is read from the next timeline.
            Some(next) => {
                let next_first = segment_of(next.begin, seg_size);
                if next_first > from {
                    out.push((span.timeline, from, Some(next_first - 1)));
                }
            }
            None => out.push((span.timeline, from, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn lsn(s: &str) -> u64 {
        super::super::name::parse_lsn(s).unwrap()
    }

    fn sample() -> Timelines {
        let mut t = Timelines::new();
        t.add(
            2,
            parse_history("1\t0/50000A0\tno recovery target specified\n").unwrap(),
        );
        t.add(
            3,
            parse_history("# comment\n1\t0/50000A0\tx\n\n2\t0/9000028\tbefore 2026-12-06\n")
                .unwrap(),
        );
        t
    }

    #[test]
    fn history_files_parse_and_bad_ones_are_refused() {
        let h = parse_history("1\t0/50000A0\tx\n2\t0/9000028\ty\n").unwrap();
        assert_eq!(
            h[1],
            Ancestor {
                timeline: 2,
                switchpoint: lsn("0/9000028")
            }
        );
        assert!(parse_history("1\n").is_err());
        assert!(parse_history("2\t0/9\tx\n1\t0/10\ty\n").is_err());
        assert!(parse_history("x\t0/9\tx\n").is_err());
    }

    #[test]
    fn a_base_backup_reaches_only_timelines_that_branched_after_it() {
        let t = sample();
        // Taken on 1 before the branch to 2: reaches 1, 2 and 3.
        for target in [1, 2, 3] {
            assert!(t.reach(1, lsn("0/3000100"), target).is_ok(), "{target}");
        }
        let p = t.reach(1, lsn("0/3000100"), 3).unwrap();
        assert_eq!(
            describe(&p),
            "1 until 0/50000A0, then 2 until 0/9000028, then 3"
        );
        // Taken on 1 after 2 branched off: only timeline 1 itself.
        let e = t.reach(1, lsn("0/7000000"), 2).unwrap_err();
        assert!(e.contains("branched off timeline 1 at 0/50000A0"), "{e}");
        // Taken on 2: not an ancestor of 1; no history for 4.
        assert!(
            t.reach(2, lsn("0/6000000"), 1)
                .unwrap_err()
                .contains("does not descend")
        );
        assert!(
            t.reach(2, lsn("0/6000000"), 4)
                .unwrap_err()
                .contains("00000004.history")
        );
        assert_eq!(t.reach(2, lsn("0/6000000"), 3).unwrap().len(), 2);
        assert_eq!(t.newest(), 3);
    }

    #[test]
    fn the_segments_a_recovery_reads() {
        let t = sample();
        let p = t.reach(1, lsn("0/3000100"), 3).unwrap();
        // Timeline 1: 3 and 4 (segment 5 holds the branch point and is read from 2); 2: 5 to
        // 8; 3: from 9 on.
        assert_eq!(
            needed(&p, lsn("0/3000028"), MB16),
            vec![(1, 3, Some(4)), (2, 5, Some(8)), (3, 9, None)]
        );
        // A backup that starts after the branch reads nothing of the parent.
        let p2 = t.reach(2, lsn("0/6000000"), 3).unwrap();
        assert_eq!(
            needed(&p2, lsn("0/6000028"), MB16),
            vec![(2, 6, Some(8)), (3, 9, None)]
        );
    }

    #[test]
    fn inconsistent_histories_and_orphan_segments_are_named() {
        let mut t = sample();
        t.add(
            4,
            parse_history("1\t0/50000A0\tx\n2\t0/9000000\ty\n3\t0/B000000\tz\n").unwrap(),
        );
        let p = t.problems(&[1, 2, 5].into_iter().collect());
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("00000004.history does not continue 00000003.history"));
        assert!(p[1].contains("timeline 5 has segments but no history file"));
    }
}
