//! Text and JSON for what `lifeboat-backup`'s commands report.

use anyhow::Result;
use backup_core::cli::Output;
use backup_core::codec::keys::KeySlot;
use backup_core::commands::backup::BackupReport;
use backup_core::commands::check::CheckReport;
use backup_core::commands::gc::GcReport;
use backup_core::commands::prune::PruneReport;
use backup_core::engines::postgres::wal::{WalPruneReport, WalStatus};
use backup_core::id::SlotId;
use backup_core::progress::{human_bytes, human_duration};
use backup_core::retention::RetentionPlan;

pub fn backup(report: &BackupReport, out: &Output) -> Result<()> {
    for w in &report.warnings {
        out.warn("lifeboat-backup", w);
    }
    for f in &report.failed {
        let msg = format!(
            "source {} FAILED and is not in snapshot {}: {}",
            f.source,
            report.snapshot.short(),
            f.error
        );
        if out.json {
            let v = serde_json::json!({"message": msg, "item": f.source});
            eprintln!("{}", backup_core::cli::json_line("error", v));
        } else {
            eprintln!("lifeboat-backup: {msg}");
        }
    }
    out.summary(serde_json::to_value(report)?, || {
        let mut s = format!(
            "snapshot {} saved: {} item(s), {} in {} ({} new chunks, {} stored)",
            report.snapshot.short(),
            report.items.len(),
            human_bytes(report.size),
            human_duration(report.seconds),
            report.chunks_new,
            human_bytes(report.stored_bytes)
        );
        if report.store_retries > 0 {
            s.push_str(&format!(
                "; {} storage requests retried",
                report.store_retries
            ));
        }
        for i in &report.items {
            s.push_str(&format!(
                "\n  {:<20} {:<8} {:>10}  {} chunks, {} new",
                i.name,
                i.kind.to_string(),
                human_bytes(i.size),
                i.chunks,
                i.chunks_new
            ));
        }
        s
    });
    Ok(())
}

pub fn check(report: &CheckReport, out: &Output) -> Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for p in &report.problems {
            eprintln!("problem: {}", p.message);
        }
        if !out.quiet || !report.ok() {
            println!(
                "checked {} snapshots, {} items, {} chunks ({} read, {}), {} packs, {} WAL files; {} unreferenced chunks{}; {}",
                report.snapshots,
                report.items,
                report.chunks,
                report.chunks_read,
                human_bytes(report.bytes_read),
                report.packs,
                report.wal_files,
                report.unreferenced_chunks,
                if report.orphan_packs > 0 {
                    format!(", {} packs without an index", report.orphan_packs)
                } else {
                    String::new()
                },
                if report.ok() {
                    "no problems".to_string()
                } else {
                    format!("{} PROBLEMS", report.problems.len())
                }
            );
        }
    }
    if let Some(h) = report.hint() {
        eprintln!("hint: {h}");
    }
    Ok(())
}

/// A prune or forget-by-policy: the plan, what was forgotten, GC, and damaged objects (always
/// on stderr, even with `--quiet`: a damaged object needs a person).
pub fn prune(report: &PruneReport, out: &Output) -> Result<()> {
    let dry_run = report.dry_run;
    let human = !out.json && !out.quiet;
    let mut json = serde_json::json!({"dry_run": dry_run});
    if let Some(plan) = &report.plan {
        if human {
            retention_plan(plan, dry_run);
        }
        let mut forgotten = plan.remove().len();
        if let Some(r) = &report.forget {
            forgotten = r.forgotten.len();
            if !r.retained.is_empty() && human {
                println!(
                    "{} snapshot(s) still under Object Lock retention were kept; they go once it expires",
                    r.retained.len()
                );
            }
            json["retained"] = serde_json::to_value(&r.retained)?;
        }
        json["plan"] = serde_json::to_value(plan)?;
        json["forgotten"] = forgotten.into();
    }
    if let Some(r) = &report.gc {
        if human {
            gc(r, dry_run);
        }
        json["gc"] = serde_json::to_value(r)?;
    }
    if let Some(w) = &report.wal {
        if human {
            wal_prune(w, dry_run);
        }
        json["wal"] = serde_json::to_value(w)?;
    }
    out.summary(json, String::new);
    for d in &report.damaged {
        eprintln!("damaged: {d}");
    }
    if let Some(h) = report.hint() {
        eprintln!("hint: {h}");
    }
    Ok(())
}

fn gc(r: &GcReport, dry_run: bool) {
    let would = |done: &'static str, plan: &'static str| if dry_run { plan } else { done };
    match &r.deferred {
        Some(why) => println!("garbage collection deferred: {why}"),
        None => println!(
            "garbage collection{}: {} of {} chunk objects unreferenced and past the grace period, {} {}; {} kept in grace{}",
            if dry_run { " (dry run)" } else { "" },
            r.chunks_deleted,
            r.chunks_total,
            human_bytes(r.bytes_deleted),
            would("reclaimed", "would be reclaimed"),
            r.chunks_in_grace,
            if r.skipped_retained.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} still under retention (skipped)",
                    r.skipped_retained.len()
                )
            }
        ),
    }
    if r.deferred.is_none() && r.packs_total > 0 {
        println!(
            "packs: {} of {} {} ({}), {} {} ({} copied, {} freed); {} unreferenced left in packs",
            r.packs_deleted,
            r.packs_total,
            would("deleted", "would be deleted"),
            human_bytes(r.pack_bytes_deleted),
            r.packs_repacked,
            would("repacked", "would be repacked"),
            human_bytes(r.repack_bytes_written),
            human_bytes(r.repack_bytes_freed),
            human_bytes(r.pack_bytes_unreferenced),
        );
    }
    for s in &r.repack_skipped {
        println!("not repacked: {s}");
    }
    if r.incomplete_removed > 0 {
        println!(
            "{} partial writes of killed runs ({}) {}",
            r.incomplete_removed,
            human_bytes(r.incomplete_bytes),
            would("removed", "would be removed")
        );
    }
}

fn retention_plan(plan: &RetentionPlan, dry_run: bool) {
    for g in &plan.groups {
        let keep = g.snapshots.iter().filter(|d| d.keep).count();
        println!(
            "host {} / sources {}: keep {keep}, {} {}",
            g.host.as_deref().unwrap_or("*"),
            g.sources
                .as_ref()
                .map(|s| s.join(","))
                .unwrap_or_else(|| "*".into()),
            if dry_run { "would remove" } else { "remove" },
            g.snapshots.len() - keep
        );
        for d in &g.snapshots {
            println!(
                "  {:<10} {:<20} {}",
                d.id.short(),
                d.time.format("%Y-%m-%d %H:%M:%S"),
                if d.keep {
                    format!("keep: {}", d.reasons.join(", "))
                } else {
                    "REMOVE".into()
                }
            );
        }
    }
}

pub fn key_slots(slots: &[KeySlot], current: SlotId, out: &Output) -> Result<()> {
    if out.json {
        let v: Vec<_> = slots
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "kind": s.kind(), "created": s.created, "host": s.host, "label": s.label, "current": s.id == current}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "  {:<17} {:<11} {:<20} {:<16} LABEL",
        "ID", "KIND", "CREATED (UTC)", "HOST"
    );
    for s in slots {
        println!(
            "{} {:<17} {:<11} {:<20} {:<16} {}",
            if s.id == current { "*" } else { " " },
            s.id,
            s.kind(),
            s.created.format("%Y-%m-%d %H:%M:%S"),
            s.host,
            s.label.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// Only when there is WAL to speak of: a cluster without base backups says nothing.
fn wal_prune(w: &WalPruneReport, dry_run: bool) {
    let verb = if dry_run { "would remove" } else { "removed" };
    for c in &w.clusters {
        match (&c.kept_from, &c.kept_all) {
            (Some(_), Some(why)) => println!("WAL of cluster {}: {why}", c.cluster),
            (Some(from), None) => println!(
                "WAL of cluster {}: {verb} {} files ({}) older than the oldest kept base backup's start {from}",
                c.cluster,
                c.removed,
                human_bytes(c.removed_bytes),
            ),
            _ => {}
        }
    }
    if w.retained > 0 {
        println!("WAL: {} files under Object Lock retention kept", w.retained);
    }
}

/// `wal status`: per cluster, its window and timelines; then the local backlog.
pub fn wal_status(st: &WalStatus, out: &Output) -> Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(st)?);
        return Ok(());
    }
    if st.clusters.is_empty() {
        println!("no WAL archived in {}", st.location);
    }
    if let Some(s) = &st.stream {
        println!("{}", stream_line(s));
    }
    let now = chrono::Utc::now();
    let ago = |t: chrono::DateTime<chrono::Utc>| human_duration((now - t).num_seconds() as f64);
    for c in &st.clusters {
        let window = match &c.window {
            Some(w) => format!(
                "recoverable from {} to {}",
                w.from.format("%Y-%m-%d %H:%M:%S UTC"),
                w.to.map(|t| format!("{} ({} ago)", t.format("%Y-%m-%d %H:%M:%S UTC"), ago(t)))
                    .unwrap_or_else(|| "the end of that base backup".into())
            ),
            None => "no base backup: nothing to recover from yet".into(),
        };
        println!(
            "cluster {}: {} base backups, {window}; {} segments ({}) in the last hour",
            c.cluster,
            c.base_backups,
            c.last_hour_segments,
            human_bytes(c.last_hour_bytes)
        );
        for t in &c.timelines {
            let how = if t.streaming {
                format!("streamed to {}", t.archived_to.as_deref().unwrap_or("?"))
            } else {
                "archived".into()
            };
            let newest = match (&t.newest, t.newest_archived) {
                (Some(n), Some(at)) => format!("{n}, {how} {} ago", ago(at)),
                (Some(n), None) => n.to_string(),
                (None, _) => "none".into(),
            };
            let branch = t
                .branched_from
                .as_ref()
                .map(|(p, lsn)| format!(", branched off {p} at {lsn}"))
                .unwrap_or_default();
            println!(
                "  timeline {}: {} segments ({}), newest {newest}{branch}{}",
                t.timeline,
                t.segments,
                human_bytes(t.bytes),
                if t.timeline == c.newest_timeline {
                    " (newest)"
                } else {
                    ""
                }
            );
            for (a, b) in &t.gaps {
                println!("    GAP: {a} .. {b} missing");
            }
        }
        for p in &c.problems {
            println!("  PROBLEM: {p}");
        }
    }
    if st.unattributed_files > 0 {
        println!(
            "{} WAL files of an older layout belong to no single cluster (kept)",
            st.unattributed_files
        );
    }
    if let Some(b) = &st.backlog {
        match (&b.oldest, b.oldest_age_seconds) {
            (Some(o), Some(age)) => println!(
                "backlog: {} segments ({}) ready in pg_wal, not archived yet; the oldest, {o}, has waited {}",
                b.ready,
                human_bytes(b.bytes),
                human_duration(age)
            ),
            _ => println!("backlog: none (every ready segment is archived)"),
        }
    }
    Ok(())
}

/// One line about what the WAL streamer did.
pub fn stream_note(n: &backup_core::engines::postgres::wal::stream::StreamNote) -> String {
    use backup_core::engines::postgres::wal::format_lsn;
    use backup_core::engines::postgres::wal::stream::StreamNote;
    match n {
        StreamNote::Connected {
            server,
            timeline,
            from,
            slot_created,
        } => format!(
            "connected to {server}, streaming timeline {timeline} from {}{}",
            format_lsn(*from),
            if *slot_created { " (slot created)" } else { "" }
        ),
        StreamNote::Lost { error, retry_in } => {
            format!("{error}; connecting again in {}s", retry_in.as_secs())
        }
        StreamNote::StoreFailed { error } => {
            format!(
                "writing to the repository failed, retrying (the server keeps the WAL): {error}"
            )
        }
        StreamNote::Timeline { from, to, at } => {
            format!(
                "timeline {from} ended at {}; following timeline {to}",
                format_lsn(*at)
            )
        }
        StreamNote::ConsolidateFailed { segment, error } => {
            format!("segment {segment} stays in pieces (it is read from them): {error}")
        }
    }
}

/// The streamer's figures in one line, with a warning when they are stale.
fn stream_line(s: &backup_core::engines::postgres::wal::stream::StreamStatus) -> String {
    use backup_core::engines::postgres::wal::format_lsn;
    let age = s
        .updated_at
        .map(|t| (chrono::Utc::now() - t).num_seconds())
        .unwrap_or(i64::MAX);
    let stale = if age > 30 {
        " — STALE: is wal stream running?"
    } else {
        ""
    };
    format!(
        "wal stream: {} on timeline {}, durable up to {}, lag {:.1} s / {}, {} store errors{stale}",
        if s.connected {
            "connected"
        } else {
            "NOT connected"
        },
        s.timeline,
        format_lsn(s.durable_lsn),
        s.lag_seconds,
        human_bytes(s.lag_bytes),
        s.store_errors
    )
}

/// `config validate`: every finding, problems marked, the retention policy in words.
pub fn validation(
    file: &std::path::Path,
    r: &backup_core::config::ValidationReport,
    out: &Output,
) -> Result<()> {
    out.result(&serde_json::to_value(r)?, || {
        let mut s = String::new();
        for f in &r.findings {
            let mark = if f.ok { "ok     " } else { "PROBLEM" };
            s.push_str(&format!(
                "{mark} {}: {}\n",
                f.scope,
                f.detail.replace('\n', "\n        ")
            ));
        }
        if let Some(ret) = &r.retention {
            s.push_str(&format!("retention: {ret}\n"));
        }
        s.push_str(&match r.problems() {
            0 => format!("{} is valid", file.display()),
            n => format!("{}: {n} problem(s)", file.display()),
        });
        s
    });
    Ok(())
}
