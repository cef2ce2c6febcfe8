//! `lifeboat-backup`: create repositories, run backups, list snapshots, check, manage keys.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use backup_core::cli::{EXIT_CODES, GlobalFlags, Output, interrupted, run_main};
use backup_core::codec::keys::KdfParams;
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::config::{
    ConfigFile, PostgresConfig, RedisConfig, ResolvedRepo, RetentionConfig, split_named,
};
use backup_core::engines::command::CommandSource;
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::lock::RunLock;
use backup_core::progress::{Progress, human_bytes, human_duration, spawn_ticker};
use backup_core::repository::{ChunkerParams, InitOptions, Repository};
use backup_core::retention;
use backup_core::secret::SecretSource;
use backup_core::source::Source;
use clap::{Args, Parser, Subcommand};

/// Back up PostgreSQL, Redis, volumes and command output into an encrypted, deduplicated repository.
#[derive(Parser)]
#[command(name = "lifeboat-backup", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a repository with a first key slot.
    Init {
        /// Argon2id memory in MiB for the passphrase slot.
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes.
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
        /// Label of the first key slot.
        #[arg(long)]
        label: Option<String>,
        /// Chunk sizes MIN,AVG,MAX in bytes (default 524288,1048576,8388608); fixed for the repository's life.
        #[arg(long, value_parser = parse_chunker)]
        chunk_sizes: Option<ChunkerParams>,
    },
    /// Back up every configured (or named / ad-hoc) source into one snapshot.
    Run(RunArgs),
    /// List snapshots.
    Snapshots,
    /// Verify the repository: snapshots readable, chunks present; --read-data decrypts every chunk.
    Check {
        #[arg(long)]
        read_data: bool,
    },
    /// Manage key slots.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Remove snapshots by policy (--keep-* flags or the config's [retention]) or by id.
    Forget {
        #[command(flatten)]
        keep: KeepFlags,
        /// Show the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Forget exactly these snapshots instead of applying a policy.
        snapshots: Vec<String>,
    },
    /// Forget by policy (if one is given or configured), then delete unreferenced chunks.
    Prune {
        #[command(flatten)]
        keep: KeepFlags,
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced chunks younger than this (default 24h): a rerun of an
        /// interrupted backup reuses them.
        #[arg(long)]
        grace: Option<String>,
        /// Percent of pack bytes that may stay unreferenced (default 10): above it the
        /// emptiest packs are rewritten without their unreferenced chunks; 100 never repacks.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        max_unused: Option<u8>,
        /// Take a backup's or GC's marker not refreshed for this long (default 1h, at least
        /// 1m) as a dead process's: after a killed run, prune defers until then.
        #[arg(long)]
        stale_after: Option<String>,
    },
    /// Never let a retention policy remove this snapshot.
    Protect { snapshot: String },
    /// Undo `protect`.
    Unprotect { snapshot: String },
}

#[derive(Args, Default)]
struct KeepFlags {
    #[arg(long)]
    keep_last: Option<u32>,
    #[arg(long)]
    keep_hourly: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything newer than this (30d, 48h, 2w, 1y).
    #[arg(long)]
    keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable).
    #[arg(long = "keep-tag")]
    keep_tags: Vec<String>,
    /// Group snapshots by these keys before applying the policy (default host,sources).
    #[arg(long, value_delimiter = ',')]
    group_by: Option<Vec<String>>,
}

impl KeepFlags {
    /// The flags as a retention config, or `None` when no rule was given.
    fn to_config(&self) -> Option<RetentionConfig> {
        let cfg = RetentionConfig {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self.keep_within.clone(),
            keep_tags: self.keep_tags.clone(),
            group_by: self.group_by.clone(),
            ..Default::default()
        };
        // A malformed rule (a bad --keep-within) still counts as given, so its error shows.
        cfg.policy().map_or(true, |p| !p.is_empty()).then_some(cfg)
    }
}

#[derive(Args)]
struct RunArgs {
    /// Back up only these configured sources.
    #[arg(long = "source", value_name = "NAME")]
    sources: Vec<String>,
    /// Ad-hoc volume: NAME=PATH.
    #[arg(long = "volume", value_name = "NAME=PATH")]
    volumes: Vec<String>,
    /// Ad-hoc command whose stdout is backed up: NAME='CMD ARGS' (run with sh -c).
    #[arg(long = "command", value_name = "NAME=CMD")]
    commands: Vec<String>,
    /// Ad-hoc PostgreSQL database: NAME=URL (the URL names the database; password from
    /// PGPASSWORD or ~/.pgpass).
    #[arg(long = "postgres", value_name = "NAME=URL")]
    postgres: Vec<String>,
    /// Ad-hoc Redis server: NAME=redis://[user:pass@]host:port (password also from REDISCLI_AUTH).
    #[arg(long = "redis", value_name = "NAME=URL")]
    redis: Vec<String>,
    /// Exclude glob for ad-hoc volumes (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Tag for the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: this machine).
    #[arg(long)]
    host: Option<String>,
    /// zstd level, 1-19 (default 1).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Wait for a running backup of the same repository instead of exiting with code 4.
    #[arg(long)]
    wait: bool,
    /// Take a prune's marker not refreshed for this long (default 1h, at least 1m) as a dead
    /// process's: after a killed prune, a backup waits until then.
    #[arg(long)]
    stale_after: Option<String>,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List key slots.
    List,
    /// Add a key slot; the new secret comes from --new-password-file, --new-password-command,
    /// --new-key-file or LIFEBOAT_NEW_PASSWORD.
    Add {
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        #[arg(long)]
        new_password_command: Option<String>,
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// Remove a key slot (never the last one).
    Remove { id: String },
}

fn parse_chunker(s: &str) -> Result<ChunkerParams, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|x| x.trim().parse::<u32>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [min, avg, max] => Ok(ChunkerParams {
            min_size: *min,
            avg_size: *avg,
            max_size: *max,
        }),
        _ => Err("expected MIN,AVG,MAX".into()),
    }
}

// glibc's malloc raises its mmap threshold after large frees, so the pipeline's MiB-sized
// chunk buffers pile up in per-thread arenas and RSS drifts upward with input size; mimalloc
// returns them and keeps peak RSS flat (docs/ARCHITECTURE.md, "Memory").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    run_main("lifeboat-backup", run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let (config, resolved) = cli.global.resolve()?;
    let out = cli.global.output();
    match cli.cmd {
        Cmd::Init {
            kdf_memory_mib,
            kdf_iterations,
            label,
            chunk_sizes,
        } => {
            let secret = resolved.secret_source()?.resolve()?;
            let opts = InitOptions {
                kdf: KdfParams {
                    memory_kib: kdf_memory_mib * 1024,
                    iterations: kdf_iterations,
                    parallelism: 1,
                },
                chunker: chunk_sizes.unwrap_or_default(),
                label,
                cache: resolved.cache.clone(),
            };
            let repo = Repository::init(resolved.store().await?, &secret, opts).await?;
            out.result(
                &serde_json::json!({"repository": resolved.url, "id": repo.config().id, "key_slot": repo.slot()}),
                || format!("created repository {} at {} (key slot {})", repo.config().id, resolved.url, repo.slot()),
            );
        }
        Cmd::Run(args) => return run_backup(&resolved, config.as_ref(), args, &out).await,
        Cmd::Snapshots => {
            let repo = resolved.open().await?;
            let listing = repo.snapshot_listing().await?;
            let snaps = &listing.snapshots;
            if out.json {
                let mut all: Vec<serde_json::Value> = snaps.iter().map(summary).collect();
                all.extend(listing.damaged.iter().map(
                    |d| serde_json::json!({"id": d.id, "damaged": d.reason, "stored": d.stored}),
                ));
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<10} {:<20} {:<16} {:>10}  ITEMS",
                    "ID", "TIME (UTC)", "HOST", "SIZE"
                );
                for s in snaps {
                    println!(
                        "{:<10} {:<20} {:<16} {:>10}  {}",
                        s.id.short(),
                        s.time.format("%Y-%m-%d %H:%M:%S"),
                        s.host,
                        human_bytes(s.size()),
                        s.source_set().join(",")
                    );
                }
                for d in &listing.damaged {
                    println!(
                        "{:<10} {:<20} {:<16} {:>10}  DAMAGED: {}",
                        d.id.short(),
                        d.stored
                            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                            .unwrap_or_else(|| "?".into()),
                        "?",
                        "?",
                        d.reason
                    );
                }
            }
            // Listed, not fatal: the other snapshots are what the operator needs now.
            for d in &listing.damaged {
                eprintln!("damaged: {d}");
            }
        }
        Cmd::Check { read_data } => {
            let repo = resolved.open().await?;
            let report = check(
                &repo,
                &CheckOptions {
                    read_data,
                    ..Default::default()
                },
            )
            .await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for p in &report.problems {
                    eprintln!("problem: {}", p.message);
                }
                if !out.quiet || !report.ok() {
                    println!(
                        "checked {} snapshots, {} items, {} chunks ({} read, {}), {} packs; {} unreferenced chunks{}; {}",
                        report.snapshots,
                        report.items,
                        report.chunks,
                        report.chunks_read,
                        human_bytes(report.bytes_read),
                        report.packs,
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
            if !report.ok() {
                eprintln!(
                    "hint: restore an older snapshot that does not use the damaged objects, and take a fresh backup"
                );
                return Ok(ExitCode::from(6));
            }
        }
        Cmd::Key(k) => key_cmd(&resolved, k, &out).await?,
        Cmd::Forget {
            keep,
            dry_run,
            snapshots,
        } => {
            let repo = resolved.open().await?;
            if !snapshots.is_empty() {
                let mut ids = Vec::new();
                for q in &snapshots {
                    // By id without opening it: a damaged manifest must be removable.
                    ids.push(repo.find_snapshot_id(q).await?);
                }
                let (done, retained) = if dry_run {
                    (ids.clone(), Vec::new())
                } else {
                    let r = repo.forget(&ids).await?;
                    (r.forgotten, r.retained)
                };
                out.result(&serde_json::json!({"forgotten": done, "retained": retained, "dry_run": dry_run}), || {
                    let mut s = format!("{} {} snapshot(s)", if dry_run { "would forget" } else { "forgot" }, done.len());
                    if !retained.is_empty() {
                        s.push_str(&format!("; {} still under Object Lock retention, kept", retained.len()));
                    }
                    s
                });
            } else {
                let rc = policy_from(&keep, config.as_ref())?;
                if retention_run(&repo, &rc, dry_run, false, &out).await? {
                    return Ok(ExitCode::from(6));
                }
            }
        }
        Cmd::Prune {
            keep,
            dry_run,
            grace,
            max_unused,
            stale_after,
        } => {
            let repo = resolved.open().await?;
            let mut rc = keep
                .to_config()
                .or_else(|| config.as_ref().and_then(|c| c.retention.clone()))
                .unwrap_or_default();
            if grace.is_some() {
                rc.grace = grace;
            }
            if max_unused.is_some() {
                rc.max_unused = max_unused;
            }
            if stale_after.is_some() {
                rc.stale_after = stale_after;
            }
            if retention_run(&repo, &rc, dry_run, true, &out).await? {
                return Ok(ExitCode::from(6));
            }
        }
        Cmd::Protect { snapshot } => {
            let repo = resolved.open().await?;
            let s = repo.find_snapshot(&snapshot).await?;
            repo.set_protected(&s.id, true).await?;
            out.result(&serde_json::json!({"protected": s.id}), || {
                format!("snapshot {} is protected", s.id.short())
            });
        }
        Cmd::Unprotect { snapshot } => {
            let repo = resolved.open().await?;
            let s = repo.find_snapshot(&snapshot).await?;
            repo.set_protected(&s.id, false).await?;
            out.result(&serde_json::json!({"unprotected": s.id}), || {
                format!("snapshot {} is no longer protected", s.id.short())
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(s: &backup_core::manifest::Snapshot) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "time": s.time, "finished": s.finished, "host": s.host, "tags": s.tags, "size": s.size(),
        "items": s.items.iter().map(|i| serde_json::json!({"name": i.name, "kind": i.kind, "size": i.size})).collect::<Vec<_>>(),
    })
}

async fn run_backup(
    resolved: &ResolvedRepo,
    config: Option<&ConfigFile>,
    args: RunArgs,
    out: &Output,
) -> Result<ExitCode> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(cfg) = config {
        for name in &args.sources {
            if !cfg.sources.contains_key(name) {
                bail!(backup_core::Error::Usage(format!(
                    "no source {name} in the config (it has: {})",
                    cfg.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let adhoc = !args.volumes.is_empty()
            || !args.commands.is_empty()
            || !args.postgres.is_empty()
            || !args.redis.is_empty();
        for (name, sc) in &cfg.sources {
            if args.sources.contains(name) || (args.sources.is_empty() && !adhoc) {
                sources.extend(sc.build(name).await?);
            }
        }
    } else if !args.sources.is_empty() {
        bail!(backup_core::Error::Usage("--source needs --config".into()));
    }
    for v in &args.volumes {
        let (name, path) = split_named(v, "--volume")?;
        let opts = VolumeOptions {
            exclude: args.excludes.clone(),
            ..Default::default()
        };
        sources.push(Box::new(VolumeSource::new(name, path, opts)));
    }
    for c in &args.commands {
        let (name, cmd) = split_named(c, "--command")?;
        sources.push(Box::new(CommandSource::new(name, cmd)));
    }
    for r in &args.redis {
        let (name, url) = split_named(r, "--redis")?;
        sources.push(Box::new(RedisConfig::from_url(&url).source(&name)?));
    }
    for p in &args.postgres {
        let (name, url) = split_named(p, "--postgres")?;
        sources.extend(PostgresConfig::from_url(&url).sources(&name).await?);
    }
    let lock_path = resolved.lock_path();
    let _lock = RunLock::acquire(&lock_path, args.wait)?;
    let repo = resolved.open().await?;
    let bc = config.map(|c| c.backup.clone()).unwrap_or_default();
    let progress = Arc::new(Progress::default());
    let show_progress = !out.quiet && !out.json && std::io::stderr().is_terminal();
    let opts = BackupOptions {
        host: args.host.or(bc.host),
        tags: if args.tags.is_empty() {
            bc.tags
        } else {
            args.tags
        },
        compression_level: args
            .compression_level
            .or(bc.compression_level)
            .unwrap_or(backup_core::commands::backup::DEFAULT_COMPRESSION_LEVEL),
        concurrency: bc
            .concurrency
            .unwrap_or_else(backup_core::commands::backup::default_concurrency),
        progress: show_progress.then(|| progress.clone()),
        stale_after: stale_after_for_run(args.stale_after.as_deref(), config)?,
        ..Default::default()
    };
    let ticker = show_progress.then(|| spawn_ticker(progress.clone()));
    // On SIGINT/SIGTERM the backup future is dropped: sources kill their producers and, as the
    // snapshot is written last, nothing that looks like a good backup is left behind.
    let result = tokio::select! {
        r = backup(&repo, sources, &opts) => r,
        sig = interrupted() => {
            drop(ticker);
            bail!("interrupted by {sig}; no snapshot was written, stored chunks will be reused by the next run");
        }
    };
    drop(ticker);
    let report =
        result.context("backup failed, no snapshot was written; retention was not applied")?;
    for w in &report.warnings {
        eprintln!("lifeboat-backup: warning: {w}");
    }
    out.result(&serde_json::to_value(&report)?, || {
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
    // Retention only after a fully successful backup (a failed run returned above).
    if let Some(rc) = config.and_then(|c| c.retention.as_ref()) {
        let quiet = Output {
            json: false,
            quiet: out.quiet || out.json,
        };
        let damaged = retention_run(&repo, rc, false, rc.prune.unwrap_or(true), &quiet)
            .await
            .context("the backup succeeded, but applying the retention policy failed")?;
        if damaged {
            // The snapshot is good; what is damaged is older, and someone must look at it.
            return Ok(ExitCode::from(6));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--stale-after`, else `[retention] stale_after`, else the default.
fn stale_after_for_run(
    flag: Option<&str>,
    config: Option<&ConfigFile>,
) -> Result<std::time::Duration> {
    let rc = RetentionConfig {
        stale_after: flag
            .map(str::to_string)
            .or_else(|| config.and_then(|c| c.retention.as_ref()?.stale_after.clone())),
        ..Default::default()
    };
    Ok(rc.gc_options()?.stale_after)
}

fn policy_from(keep: &KeepFlags, config: Option<&ConfigFile>) -> Result<RetentionConfig> {
    keep.to_config()
        .or_else(|| config.and_then(|c| c.retention.clone()))
        .ok_or_else(|| {
            backup_core::Error::Usage("no retention policy: give --keep-* flags, snapshot ids, or a [retention] section in the config".into())
                .into()
        })
}

/// Applies a retention config: plan, forget (unless dry run), then GC when `gc`.
async fn retention_run(
    repo: &backup_core::Repository,
    rc: &RetentionConfig,
    dry_run: bool,
    gc: bool,
    out: &Output,
) -> Result<bool> {
    let opts = backup_core::commands::prune::PruneOptions {
        policy: Some(rc.policy()?),
        gc: if gc { Some(rc.gc_options()?) } else { None },
        dry_run,
    };
    let report = backup_core::commands::prune::prune(repo, &opts).await?;
    let mut json = serde_json::json!({"dry_run": dry_run});
    if let Some(plan) = &report.plan {
        if !out.json && !out.quiet {
            print_retention(plan, dry_run);
        }
        let mut forgotten = plan.remove().len();
        if let Some(r) = &report.forget {
            forgotten = r.forgotten.len();
            if !r.retained.is_empty() && !out.json && !out.quiet {
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
    let damaged = &report.damaged;
    if let Some(r) = &report.gc {
        if !out.json && !out.quiet {
            match &r.deferred {
                Some(why) => println!("garbage collection deferred: {why}"),
                None => println!(
                    "garbage collection{}: {} of {} chunk objects unreferenced and past the grace period, {} reclaimed; {} kept in grace{}",
                    if dry_run { " (dry run)" } else { "" },
                    r.chunks_deleted,
                    r.chunks_total,
                    human_bytes(r.bytes_deleted),
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
                let would = |done: &str, plan: &str| {
                    if dry_run {
                        plan.to_string()
                    } else {
                        done.to_string()
                    }
                };
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
                    if dry_run {
                        "would be removed"
                    } else {
                        "removed"
                    }
                );
            }
        }
        json["gc"] = serde_json::to_value(r)?;
    }
    if out.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    // Always on stderr, even with --quiet: a damaged object needs a person.
    for d in damaged {
        eprintln!("damaged: {d}");
    }
    if !damaged.is_empty() {
        eprintln!(
            "hint: nothing was deleted because it could not be read; run `lifeboat-backup check --read-data`, and forget snapshots that cannot be recovered"
        );
    }
    Ok(!damaged.is_empty())
}

fn print_retention(plan: &retention::RetentionPlan, dry_run: bool) {
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

async fn key_cmd(resolved: &ResolvedRepo, k: KeyCmd, out: &Output) -> Result<()> {
    let repo = resolved.open().await?;
    match k {
        KeyCmd::List => {
            let slots = repo.key_slots().await?;
            if out.json {
                let v: Vec<_> = slots
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id, "kind": s.kind(), "created": s.created, "host": s.host, "label": s.label, "current": s.id == repo.slot()}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "  {:<17} {:<11} {:<20} {:<16} LABEL",
                    "ID", "KIND", "CREATED (UTC)", "HOST"
                );
                for s in slots {
                    println!(
                        "{} {:<17} {:<11} {:<20} {:<16} {}",
                        if s.id == repo.slot() { "*" } else { " " },
                        s.id,
                        s.kind(),
                        s.created.format("%Y-%m-%d %H:%M:%S"),
                        s.host,
                        s.label.unwrap_or_default()
                    );
                }
            }
            for d in repo.damaged_key_slots().await? {
                eprintln!(
                    "damaged: key slot {} ({}); it opens nothing; delete the object if you have no copy of it",
                    d.key, d.reason
                );
            }
        }
        KeyCmd::Add {
            new_password_file,
            new_password_command,
            new_key_file,
            label,
            kdf_memory_mib,
            kdf_iterations,
        } => {
            let src = new_password_file
                .map(SecretSource::PasswordFile)
                .or(new_password_command.map(SecretSource::PasswordCommand))
                .or(new_key_file.map(SecretSource::KeyFile))
                .or_else(|| {
                    std::env::var_os("LIFEBOAT_NEW_PASSWORD").map(|_| SecretSource::PasswordEnv("LIFEBOAT_NEW_PASSWORD".into()))
                })
                .ok_or_else(|| {
                    backup_core::Error::Usage(
                        "key add needs --new-password-file, --new-password-command, --new-key-file or LIFEBOAT_NEW_PASSWORD".into(),
                    )
                })?;
            let kdf = KdfParams {
                memory_kib: kdf_memory_mib * 1024,
                iterations: kdf_iterations,
                parallelism: 1,
            };
            let slot = repo.add_key(&src.resolve()?, kdf, label).await?;
            out.result(
                &serde_json::json!({"added": slot.id, "kind": slot.kind()}),
                || format!("added {} key slot {}", slot.kind(), slot.id),
            );
        }
        KeyCmd::Remove { id } => {
            let removed = repo.remove_key(&id).await?;
            out.result(&serde_json::json!({"removed": removed}), || {
                format!("removed key slot {removed}")
            });
            if removed == repo.slot() && !out.json {
                eprintln!("note: that was the slot used to open the repository in this command");
            }
        }
    }
    Ok(())
}
