//! `lifeboat-backup`: create repositories, run backups, list snapshots, check, manage keys.

mod render;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use backup_core::cli::{
    DocCmd, EXIT_CODES, FilterFlags, GlobalFlags, Output, exit_code_for, failed_ending,
    interrupted, print_hooks, print_snapshots, run_main,
};
use backup_core::codec::keys::KdfParams;
use backup_core::commands::backup::{BackupOptions, BackupReport, backup};
use backup_core::commands::check::{CheckOptions, check};
use backup_core::commands::prune::{PruneOptions, PruneReport, prune};
use backup_core::config::{
    ConfigFile, ResolvedRepo, RetentionConfig, SourceSelection, select_sources,
};
use backup_core::engines::postgres::wal::{self, ClusterId, WalPushOptions};
use backup_core::hooks::{HooksConfig, RunHooks};
use backup_core::lock::RunLock;
use backup_core::progress::{Progress, human_bytes};
use backup_core::repository::{ChunkerParams, InitOptions, Repository};
use backup_core::secret::SecretSource;
use backup_core::supervise::{Action, Ending, Supervised, Supervisor, action_metrics};
use clap::{Args, CommandFactory, Parser, Subcommand};

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
    Snapshots {
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Verify the repository: snapshots readable, chunks present; --read-data decrypts every chunk.
    Check {
        /// Also download, decrypt and verify every copy of every chunk (slow: reads the whole repository).
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        action: ActionFlags,
    },
    /// Manage key slots.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Check a config file, or print an annotated example.
    #[command(subcommand)]
    Config(ConfigCmd),
    #[command(flatten)]
    Doc(DocCmd),
    /// PostgreSQL WAL archive: `archive_command = 'lifeboat-backup wal push %p'`, and its status.
    #[command(subcommand)]
    Wal(WalCmd),
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
        /// Show what would be forgotten and deleted, change nothing.
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
        #[command(flatten)]
        action: ActionFlags,
    },
    /// Never let a retention policy remove this snapshot.
    Protect { snapshot: String },
    /// Undo `protect`.
    Unprotect { snapshot: String },
}

#[derive(Args, Default)]
struct KeepFlags {
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks that have one.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have one.
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Keep everything newer than this (30d, 48h, 2w, 1y).
    #[arg(long)]
    keep_within: Option<String>,
    /// Point-in-time window (7d): keep the base backups, and so the WAL, that a restore to
    /// any moment of the last DURATION needs (the newest base backup older than the window;
    /// the others by the other rules).
    #[arg(long, value_name = "DURATION")]
    keep_pitr: Option<String>,
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
            keep_pitr: self.keep_pitr.clone(),
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
    /// Ad-hoc PostgreSQL base backup of the whole cluster (pg_basebackup, for point-in-time
    /// recovery): NAME=URL of a role with REPLICATION.
    #[arg(long = "pg-base", value_name = "NAME=URL")]
    pg_base: Vec<String>,
    /// Exclude glob for ad-hoc volumes (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    excludes: Vec<String>,
    /// Tag for the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Host name to record (default: this machine).
    #[arg(long)]
    host: Option<String>,
    /// zstd level, 1-19, for every item (default: 1, and 6 for --pg-base base backups).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Wait for a running backup of the same repository instead of exiting with code 4.
    #[arg(long)]
    wait: bool,
    /// Take a prune's marker not refreshed for this long (default 1h, at least 1m) as a dead
    /// process's: after a killed prune, a backup waits until then.
    #[arg(long)]
    stale_after: Option<String>,
    /// When a source fails, commit the others in a snapshot marked incomplete (exit code 8)
    /// instead of writing none (default: [backup] partial, else off).
    #[arg(long)]
    partial: bool,
    /// Write the run's Prometheus metrics to FILE (node_exporter textfile; default: the
    /// config's [metrics] textfile).
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    #[command(flatten)]
    hooks: HookFlags,
}

/// Hook commands given on the command line: run after the config's of the same phase.
#[derive(Args, Default, Clone)]
struct HookFlags {
    /// Shell command to run before the action (repeatable); its failure stops the action.
    #[arg(long = "hook-before", value_name = "CMD")]
    before: Vec<String>,
    /// Shell command to run after the action succeeded (repeatable); its failure fails the exit code.
    #[arg(long = "hook-after", value_name = "CMD")]
    after: Vec<String>,
    /// Shell command to run after the action failed (repeatable).
    #[arg(long = "hook-on-failure", value_name = "CMD")]
    on_failure: Vec<String>,
    /// Shell command to run after the action, however it ended (repeatable).
    #[arg(long = "hook-finally", value_name = "CMD")]
    finally: Vec<String>,
}

impl HookFlags {
    fn add_to(&self, h: &mut HooksConfig) {
        h.before.extend(self.before.iter().cloned());
        h.after.extend(self.after.iter().cloned());
        h.on_failure.extend(self.on_failure.iter().cloned());
        h.finally.extend(self.finally.iter().cloned());
    }
}

/// Hooks and metrics flags of `prune` and `check`.
#[derive(Args, Default, Clone)]
struct ActionFlags {
    #[command(flatten)]
    hooks: HookFlags,
    /// Write the action's Prometheus metrics to FILE (default: beside the config's [metrics]
    /// textfile, as NAME-prune.prom / NAME-check.prom).
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
}

impl RunArgs {
    fn selection(&self) -> SourceSelection {
        SourceSelection {
            sources: self.sources.clone(),
            volumes: self.volumes.clone(),
            commands: self.commands.clone(),
            postgres: self.postgres.clone(),
            redis: self.redis.clone(),
            pg_base: self.pg_base.clone(),
            excludes: self.excludes.clone(),
        }
    }
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Parse FILE (unknown keys refused, with line numbers), check every secret file and
    /// volume path, explain the retention policy; exit 2 naming every problem.
    Validate {
        file: PathBuf,
        /// Also reach the repository (bucket, initialised) and every PostgreSQL and Redis source.
        #[arg(long)]
        connect: bool,
    },
    /// Print an annotated example config (every section, commented).
    Example,
}

#[derive(Subcommand)]
enum WalCmd {
    /// Archive one WAL file (archive_command's %p); exit 0 only once it is durable. Also pushes
    /// segments PostgreSQL has marked ready ahead, so later calls return at once.
    Push {
        /// The WAL file (relative to the data directory, as PostgreSQL passes it).
        path: PathBuf,
        /// Ready segments to push ahead in parallel (0: only this one).
        #[arg(long, default_value_t = 8)]
        lookahead: usize,
        /// The cluster's system identifier, for a history file outside a data directory
        /// (segments carry it in their header; archive_command needs no flag).
        #[arg(long, value_name = "SYSID")]
        cluster: Option<String>,
    },
    /// Stream WAL over replication into the repository, in pieces every few seconds (long
    /// running: a systemd service or a sidecar). The server's slot keeps WAL until it is
    /// durable in the repository; stop with SIGTERM or Ctrl-C (what is held is written first).
    Stream(StreamArgs),
    /// What the archive holds per cluster and timeline: the recoverable window, the newest
    /// segment and when it came, gaps, and with --pg-wal how far behind archiving is.
    Status {
        /// The cluster's pg_wal directory, to count segments not archived yet.
        #[arg(long, value_name = "DIR")]
        pg_wal: Option<PathBuf>,
        /// Also write the figures as Prometheus metrics to FILE (for node_exporter's textfile
        /// collector; written atomically).
        #[arg(long, value_name = "FILE")]
        prometheus: Option<PathBuf>,
        /// Include what `wal stream --status-file FILE` last wrote (lag, durable position).
        #[arg(long, value_name = "FILE")]
        stream_status: Option<PathBuf>,
    },
}

#[derive(Args)]
struct StreamArgs {
    /// libpq connection string of the server (a role with REPLICATION); default: the url of
    /// the config's only `postgres_base` source. TLS is not spoken: use a Unix socket or a
    /// tunnel to a remote server.
    #[arg(long, value_name = "CONNINFO")]
    url: Option<String>,
    /// The config's `postgres_base` source whose url and password to use.
    #[arg(long, value_name = "NAME", conflicts_with = "url")]
    source: Option<String>,
    /// Physical replication slot (created unless --no-create-slot).
    #[arg(long, default_value = "lifeboat")]
    slot: String,
    /// Fail instead of creating a missing slot.
    #[arg(long)]
    no_create_slot: bool,
    /// What the server knows the streamer as (for synchronous_standby_names).
    #[arg(long, default_value = "lifeboat")]
    application_name: String,
    /// Seal a piece once its oldest byte is this many seconds old.
    #[arg(long, default_value_t = 2.0)]
    piece_seconds: f64,
    /// Seal a piece once it holds this many MiB.
    #[arg(long, default_value_t = 8)]
    piece_mib: usize,
    /// Seal whenever the server has nothing more to send, for synchronous_standby_names =
    /// 'lifeboat': commits then wait until their WAL is durable in the repository (RPO 0).
    #[arg(long)]
    synchronous: bool,
    /// Write the streamer's metrics to FILE every second (Prometheus textfile).
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
    /// Write the streamer's status as JSON to FILE every second.
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List key slots.
    List,
    /// Add a key slot; the new secret comes from --new-password-file, --new-password-command,
    /// --new-key-file or LIFEBOAT_NEW_PASSWORD.
    Add {
        /// File holding the new slot's passphrase.
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Command printing the new slot's passphrase.
        #[arg(long)]
        new_password_command: Option<String>,
        /// Key file for the new slot (instead of a passphrase).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        /// Label shown by `key list` (who or what uses the slot).
        #[arg(long)]
        label: Option<String>,
        /// Argon2id memory in MiB for a passphrase slot.
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes.
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

/// Each subcommand is a library call and its rendering; the exit code is the library's.
async fn run(cli: Cli) -> Result<ExitCode> {
    // The config commands take the file as their argument and need no repository.
    if let Cmd::Config(c) = &cli.cmd {
        return config_cmd(c, &cli.global.output()).await;
    }
    if let Cmd::Doc(d) = &cli.cmd {
        d.print(Cli::command())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (config, resolved) = cli.global.resolve()?;
    let config = config.as_ref();
    let out = cli.global.output();
    let code = match cli.cmd {
        Cmd::Init {
            kdf_memory_mib,
            kdf_iterations,
            label,
            chunk_sizes,
        } => {
            let kdf = kdf(kdf_memory_mib, kdf_iterations);
            init(&resolved, kdf, label, chunk_sizes, &out).await?;
            0
        }
        Cmd::Run(args) => run_backup(&resolved, config, args, &out).await?,
        Cmd::Snapshots { filter } => {
            let repo = resolved.open().await?;
            let listing = repo.snapshot_listing().await?;
            print_snapshots(
                &listing.filtered(&filter.for_listing()),
                &repo.location(),
                &out,
            );
            0
        }
        Cmd::Check { read_data, action } => {
            let work = async {
                let repo = resolved.open().await?;
                let opts = CheckOptions {
                    read_data,
                    ..Default::default()
                };
                let report = check(&repo, &opts).await?;
                render::check(&report, &out)?;
                let code = report.exit_code();
                Ok((report, code))
            };
            supervised_action(&resolved, config, &action, &out, work).await?
        }
        Cmd::Config(_) | Cmd::Doc(_) => unreachable!("handled before the repository is resolved"),
        Cmd::Key(k) => {
            key_cmd(&resolved, k, &out).await?;
            0
        }
        Cmd::Wal(WalCmd::Push {
            path,
            lookahead,
            cluster,
        }) => {
            let cluster = cluster.as_deref().map(ClusterId::parse).transpose()?;
            wal_push(&resolved, &path, lookahead, cluster, &out).await?;
            0
        }
        Cmd::Wal(WalCmd::Stream(args)) => {
            wal_stream(&resolved, config, args, &out).await?;
            0
        }
        Cmd::Wal(WalCmd::Status {
            pg_wal,
            prometheus,
            stream_status,
        }) => {
            let repo = resolved.open().await?;
            let mut st = wal::status(&repo, pg_wal.as_deref()).await?;
            if let Some(f) = stream_status {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the streamer's status {}", f.display()))?;
                st.stream = Some(serde_json::from_str(&text).with_context(|| {
                    format!("{} is not a `wal stream --status-file`", f.display())
                })?);
            }
            if let Some(file) = prometheus {
                backup_core::metrics::write_textfile(&file, &st.to_prometheus())?;
            }
            render::wal_status(&st, &out)?;
            0
        }
        Cmd::Forget {
            keep,
            dry_run,
            snapshots,
        } => {
            let repo = resolved.open().await?;
            if snapshots.is_empty() {
                let rc = policy_from(&keep, config)?;
                retention_run(&repo, &rc, dry_run, false, &out).await?.1
            } else {
                forget_ids(&repo, &snapshots, dry_run, &out).await?;
                0
            }
        }
        Cmd::Prune {
            keep,
            dry_run,
            grace,
            max_unused,
            stale_after,
            action,
        } => {
            let mut rc = keep
                .to_config()
                .or_else(|| config.and_then(|c| c.retention.clone()))
                .unwrap_or_default();
            rc.grace = grace.or(rc.grace);
            rc.max_unused = max_unused.or(rc.max_unused);
            rc.stale_after = stale_after.or(rc.stale_after);
            let work = async {
                let repo = resolved.open().await?;
                retention_run(&repo, &rc, dry_run, true, &out).await
            };
            supervised_action(&resolved, config, &action, &out, work).await?
        }
        Cmd::Protect { snapshot } => {
            protect(&resolved, &snapshot, true, &out).await?;
            0
        }
        Cmd::Unprotect { snapshot } => {
            protect(&resolved, &snapshot, false, &out).await?;
            0
        }
    };
    Ok(ExitCode::from(code))
}

fn kdf(memory_mib: u32, iterations: u32) -> KdfParams {
    KdfParams {
        memory_kib: memory_mib * 1024,
        iterations,
        parallelism: 1,
    }
}

async fn init(
    resolved: &ResolvedRepo,
    kdf: KdfParams,
    label: Option<String>,
    chunk_sizes: Option<ChunkerParams>,
    out: &Output,
) -> Result<()> {
    let secret = resolved.secret_source()?.resolve()?;
    let opts = InitOptions {
        kdf,
        chunker: chunk_sizes.unwrap_or_default(),
        label,
        cache: resolved.cache.clone(),
    };
    let repo = Repository::init(resolved.store_for_init().await?, &secret, opts).await?;
    out.result(
        &serde_json::json!({"repository": resolved.url, "id": repo.config().id, "key_slot": repo.slot()}),
        || format!("created repository {} at {} (key slot {})", repo.config().id, resolved.url, repo.slot()),
    );
    Ok(())
}

/// `forget ID…`: by id, without opening the manifests (a damaged one must be removable).
async fn forget_ids(
    repo: &Repository,
    queries: &[String],
    dry_run: bool,
    out: &Output,
) -> Result<()> {
    let mut ids = Vec::new();
    for q in queries {
        ids.push(repo.find_snapshot_id(q).await?);
    }
    let (done, retained) = if dry_run {
        (ids, Vec::new())
    } else {
        let r = repo.forget(&ids).await?;
        (r.forgotten, r.retained)
    };
    out.result(
        &serde_json::json!({"forgotten": done, "retained": retained, "dry_run": dry_run}),
        || {
            let mut s = format!(
                "{} {} snapshot(s)",
                if dry_run { "would forget" } else { "forgot" },
                done.len()
            );
            if !retained.is_empty() {
                s.push_str(&format!(
                    "; {} still under Object Lock retention, kept",
                    retained.len()
                ));
            }
            s
        },
    );
    Ok(())
}

async fn protect(resolved: &ResolvedRepo, query: &str, on: bool, out: &Output) -> Result<()> {
    let repo = resolved.open().await?;
    let s = repo.find_snapshot(query).await?;
    repo.set_protected(&s.id, on).await?;
    let key = if on { "protected" } else { "unprotected" };
    out.result(&serde_json::json!({ key: s.id }), || {
        if on {
            format!("snapshot {} is protected", s.id.short())
        } else {
            format!("snapshot {} is no longer protected", s.id.short())
        }
    });
    Ok(())
}

/// `wal push`: an acknowledgement left by an earlier call's look-ahead answers without
/// deriving the key; otherwise the file is pushed, and ready segments with it.
async fn wal_push(
    resolved: &ResolvedRepo,
    path: &Path,
    lookahead: usize,
    cluster: Option<ClusterId>,
    out: &Output,
) -> Result<()> {
    let spool = resolved
        .cache
        .home()
        .map(|h| h.join("wal-spool").join(resolved.url_tag()));
    // The repository's id is asked for only when there is an acknowledgement to compare.
    if let Some(acked) = spool.as_deref().and_then(|s| wal::take_ack(s, path))
        && acked == wal::repository_id(&*resolved.store().await?).await?
    {
        out.result(
            &serde_json::json!({"pushed": path, "already_archived": true}),
            || format!("{} was archived ahead by an earlier call", path.display()),
        );
        return Ok(());
    }
    let repo = resolved.open().await?;
    let opts = WalPushOptions {
        lookahead,
        spool,
        cluster,
    };
    let r = wal::push(&repo, path, &opts).await?;
    out.result(&serde_json::to_value(&r)?, || {
        let ahead = if r.pushed_ahead.is_empty() {
            String::new()
        } else {
            format!(", and {} ready segments ahead", r.pushed_ahead.len())
        };
        let how = if r.already_archived {
            "was already archived"
        } else {
            "archived"
        };
        format!("{} {how} ({}){ahead}", r.name, human_bytes(r.bytes))
    });
    Ok(())
}

/// `wal stream`: runs the streamer until SIGINT/SIGTERM, printing what happens to stderr and
/// keeping the metrics and status files fresh.
async fn wal_stream(
    resolved: &ResolvedRepo,
    config: Option<&ConfigFile>,
    args: StreamArgs,
    out: &Output,
) -> Result<()> {
    use backup_core::engines::postgres::wal::stream::{
        self, StreamNote, StreamOptions, StreamStatus,
    };
    let (conninfo, password) = stream_target(config, &args)?;
    let repo = resolved.open().await?;
    let opts = StreamOptions {
        conninfo,
        password,
        slot: args.slot,
        create_slot: !args.no_create_slot,
        application_name: args.application_name,
        piece_interval: std::time::Duration::from_secs_f64(args.piece_seconds.max(0.05)),
        piece_bytes: args.piece_mib.max(1) << 20,
        synchronous: args.synchronous,
        ..Default::default()
    };
    let status = Arc::new(std::sync::Mutex::new(StreamStatus::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let notes =
        |n: StreamNote| eprintln!("lifeboat-backup: wal stream: {}", render::stream_note(&n));
    let export = |st: &StreamStatus| -> Result<()> {
        let st = &StreamStatus {
            updated_at: Some(chrono::Utc::now()),
            ..st.clone()
        };
        if let Some(f) = &args.prometheus {
            backup_core::metrics::write_textfile(f, &st.to_prometheus())?;
        }
        if let Some(f) = &args.status_file {
            backup_core::metrics::write_textfile(f, &serde_json::to_string_pretty(st)?)?;
        }
        Ok(())
    };
    let run = stream::stream(&repo, &opts, status.clone(), stop.clone(), &notes);
    let signal = interrupted();
    tokio::pin!(run, signal);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            sig = &mut signal, if !stop.is_cancelled() => {
                eprintln!("lifeboat-backup: wal stream: {sig}: writing what is held, then stopping");
                stop.cancel();
            }
            _ = tick.tick() => {
                // A metrics file that cannot be written must not stop the WAL.
                if let Err(e) = export(&status.lock().expect("status").clone()) {
                    eprintln!("lifeboat-backup: wal stream: warning: {e:#}");
                }
            }
        }
    };
    let st = status.lock().expect("status").clone();
    export(&st)?;
    result?;
    out.result(&serde_json::to_value(&st)?, || {
        format!(
            "stopped; durable up to {} on timeline {} ({} pieces, {})",
            wal::format_lsn(st.durable_lsn),
            st.timeline,
            st.pieces,
            human_bytes(st.bytes)
        )
    });
    Ok(())
}

/// The connection string and configured password `wal stream` uses.
fn stream_target(
    config: Option<&ConfigFile>,
    args: &StreamArgs,
) -> Result<(String, Option<zeroize::Zeroizing<String>>)> {
    use backup_core::config::SourceConfig;
    if let Some(url) = &args.url {
        return Ok((url.clone(), None));
    }
    let bases: Vec<_> = config
        .map(|c| {
            c.sources
                .iter()
                .filter_map(|(n, s)| match s {
                    SourceConfig::PostgresBase(b) => Some((n.clone(), b.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let chosen = match &args.source {
        Some(name) => bases.iter().find(|(n, _)| n == name),
        None if bases.len() == 1 => bases.first(),
        None => None,
    };
    let Some((_, b)) = chosen else {
        let names: Vec<&str> = bases.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "wal stream needs a server: give --url CONNINFO, or --source NAME of a postgres_base source in the config (it has: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    Ok((b.url.clone(), b.password()?))
}

/// `run`: hooks around backing up the selected sources and applying the config's retention,
/// then the monitors and the run's metrics.
async fn run_backup(
    resolved: &ResolvedRepo,
    config: Option<&ConfigFile>,
    args: RunArgs,
    out: &Output,
) -> Result<u8> {
    let selection = args.selection();
    let mut hooks = config.map(|c| c.hooks.clone()).unwrap_or_default();
    args.hooks.add_to(&mut hooks);
    let hooks = RunHooks::new(hooks, source_hooks(config, &selection));
    let mut sup = supervisor(Action::Run, resolved, config, hooks);
    sup.start().await;
    let result = async {
        let repo = resolved.open().await?;
        // The lock before the hooks: a run that finds another holding it runs no hooks,
        // which would act on that run's sources.
        let _lock = RunLock::for_repository(
            resolved.cache.home().as_deref(),
            &repo.config().id,
            args.wait,
        )?;
        let work = backup_and_retention(&repo, config, &selection, &args, out);
        supervised(&mut sup, out, work).await
    }
    .await;
    let textfile = args
        .prometheus
        .clone()
        .or_else(|| config.and_then(|c| c.metrics.textfile_for(Action::Run)));
    finish(sup, resolved, textfile, &result, out).await;
    result.map(|(_, code)| code)
}

/// The hooks, monitors and Pushgateway of `action` from the config.
fn supervisor(
    action: Action,
    resolved: &ResolvedRepo,
    config: Option<&ConfigFile>,
    hooks: RunHooks,
) -> Supervisor {
    Supervisor::new(
        action,
        &resolved.url,
        config
            .and_then(|c| c.backup.host.clone())
            .unwrap_or_else(backup_core::hostname),
        hooks,
        config.map(|c| c.monitor.clone()).unwrap_or_default(),
        config.and_then(|c| c.metrics.pushgateway.clone()),
    )
}

/// The `before` hooks, the work, the closing hooks (printed as they ran). The work's result,
/// else the first error: a failed `after` hook fails an action whose work succeeded.
async fn supervised<T: Supervised>(
    sup: &mut Supervisor,
    out: &Output,
    work: impl std::future::Future<Output = Result<(T, u8)>>,
) -> Result<(T, u8)> {
    let before = sup.before().await;
    print_hooks(&sup.drain_hooks(), out);
    let result = match before {
        Ok(()) => work.await,
        Err(e) => Err(e.into()),
    };
    let end = sup.end(&ending(&result)).await;
    print_hooks(&sup.drain_hooks(), out);
    let done = result?;
    end?;
    Ok(done)
}

/// How an action's result reads to hooks and monitors.
fn ending<T: Supervised>(result: &Result<(T, u8)>) -> Ending {
    match result {
        Ok((report, code)) => report.ending(*code),
        Err(e) => failed_ending(&**e),
    }
}

/// After an action: its metrics to the textfile (if any) and the Pushgateway, the monitors
/// told. The action's outcome is what matters: what fails here is a warning.
async fn finish<T: Supervised>(
    mut sup: Supervisor,
    resolved: &ResolvedRepo,
    textfile: Option<PathBuf>,
    result: &Result<(T, u8)>,
    out: &Output,
) {
    let (report, exit_code) = match result {
        Ok((r, code)) => (Some(r), *code),
        Err(e) => (None, exit_code_for(&**e)),
    };
    let previous = textfile
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok());
    let text = action_metrics(
        &resolved.url,
        report,
        exit_code,
        sup.seconds(),
        previous.as_deref(),
    );
    if let Some(file) = textfile
        && let Err(e) = backup_core::metrics::write_textfile(&file, &text)
    {
        out.warn("lifeboat-backup", &format!("metrics not written: {e}"));
    }
    warn_all(sup.finish(&ending(result), &text).await, out);
}

/// `prune` and `check` under their `[hooks.ACTION]`, the flags' hooks, the monitors and
/// metrics. Returns the exit code.
async fn supervised_action<T: Supervised>(
    resolved: &ResolvedRepo,
    config: Option<&ConfigFile>,
    flags: &ActionFlags,
    out: &Output,
    work: impl std::future::Future<Output = Result<(T, u8)>>,
) -> Result<u8> {
    let action = T::ACTION;
    let mut hooks = config
        .and_then(|c| c.action_hooks.get(&action.to_string()).cloned())
        .unwrap_or_default();
    flags.hooks.add_to(&mut hooks);
    let mut sup = supervisor(action, resolved, config, RunHooks::new(hooks, Vec::new()));
    sup.start().await;
    let result = supervised(&mut sup, out, work).await;
    let textfile = flags
        .prometheus
        .clone()
        .or_else(|| config.and_then(|c| c.metrics.textfile_for(action)));
    finish(sup, resolved, textfile, &result, out).await;
    result.map(|(_, code)| code)
}

/// The annotated example (the same file the demo runs with).
const EXAMPLE_CONFIG: &str = include_str!("../../../fixtures/lifeboat.toml");

async fn config_cmd(c: &ConfigCmd, out: &Output) -> Result<ExitCode> {
    let (file, connect) = match c {
        ConfigCmd::Example => {
            print!("{EXAMPLE_CONFIG}");
            return Ok(ExitCode::SUCCESS);
        }
        ConfigCmd::Validate { file, connect } => (file, *connect),
    };
    let cfg = ConfigFile::load(file)?;
    let report = backup_core::config::validate(&cfg, connect).await;
    render::validation(file, &report, out)?;
    Ok(ExitCode::from(if report.problems() > 0 { 2 } else { 0 }))
}

fn warn_all(warnings: Vec<String>, out: &Output) {
    for w in warnings {
        out.warn("lifeboat-backup", &w);
    }
}

/// The hooks of the configured sources this run backs up.
fn source_hooks(
    config: Option<&ConfigFile>,
    selection: &SourceSelection,
) -> Vec<(String, HooksConfig)> {
    let Some(cfg) = config else {
        return Vec::new();
    };
    selection
        .configured(cfg)
        .into_iter()
        .filter_map(|n| cfg.source_hooks.get(&n).map(|h| (n, h.clone())))
        .collect()
}

/// Backs up, renders the report, then applies retention; the snapshot made and the exit code.
async fn backup_and_retention(
    repo: &Repository,
    config: Option<&ConfigFile>,
    selection: &SourceSelection,
    args: &RunArgs,
    out: &Output,
) -> Result<(BackupReport, u8)> {
    let sources = select_sources(config, selection).await?;
    let progress = Arc::new(Progress::default());
    let mut opts = backup_options(config, args)?;
    let ticker = out.progress(&progress);
    opts.progress = ticker.is_some().then(|| progress.clone());
    // On SIGINT/SIGTERM the backup future is dropped: sources kill their producers and, as the
    // snapshot is written last, nothing that looks like a good backup is left behind.
    let result = tokio::select! {
        r = backup(repo, sources, &opts) => r,
        sig = interrupted() => {
            drop(ticker);
            bail!("interrupted by {sig}; no snapshot was written, stored chunks will be reused by the next run");
        }
    };
    drop(ticker);
    let report =
        result.context("backup failed, no snapshot was written; retention was not applied")?;
    render::backup(&report, out)?;
    if !report.failed.is_empty() {
        if config.is_some_and(|c| c.retention.is_some()) {
            eprintln!("lifeboat-backup: retention was not applied: the snapshot is incomplete");
        }
        return Ok((report, backup_core::error::EXIT_INCOMPLETE));
    }
    // Files that could not be read: the snapshot stands and retention runs (a file that stays
    // unreadable must not stop it for ever), but the exit code says that data is missing.
    // (A partial snapshot returned above: what lacks data here is unreadable files.)
    let lacking = if report.lacks_data() {
        backup_core::error::EXIT_INCOMPLETE
    } else {
        0
    };
    // Retention only after a backup with every source (a partial run returned above).
    let Some(rc) = config.and_then(|c| c.retention.as_ref()) else {
        return Ok((report, lacking));
    };
    let quiet = Output {
        json: false,
        quiet: out.quiet || out.json,
    };
    // A damaged older object exits non-zero: the snapshot is good, but someone must look.
    let (_, code) = retention_run(repo, rc, false, rc.prune.unwrap_or(true), &quiet)
        .await
        .context("the backup succeeded, but applying the retention policy failed")?;
    Ok((report, if code != 0 { code } else { lacking }))
}

/// Flags over `[backup]` over the defaults.
fn backup_options(config: Option<&ConfigFile>, args: &RunArgs) -> Result<BackupOptions> {
    let bc = config.map(|c| c.backup.clone()).unwrap_or_default();
    Ok(BackupOptions {
        host: args.host.clone().or(bc.host),
        tags: if args.tags.is_empty() {
            bc.tags
        } else {
            args.tags.clone()
        },
        compression_level: args.compression_level.or(bc.compression_level),
        concurrency: bc
            .concurrency
            .unwrap_or_else(backup_core::commands::backup::default_concurrency),
        stale_after: stale_after_for_run(args.stale_after.as_deref(), config)?,
        anomaly: config
            .map(|c| c.source_anomaly.clone().into_iter().collect())
            .unwrap_or_default(),
        partial: args.partial || bc.partial.unwrap_or(false),
        ..Default::default()
    })
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

/// Applies a retention config (plan, forget unless dry run, then GC when `gc`); returns the
/// report and the exit code.
async fn retention_run(
    repo: &Repository,
    rc: &RetentionConfig,
    dry_run: bool,
    gc: bool,
    out: &Output,
) -> Result<(PruneReport, u8)> {
    let opts = PruneOptions {
        policy: Some(rc.policy()?),
        gc: if gc { Some(rc.gc_options()?) } else { None },
        dry_run,
    };
    let report = prune(repo, &opts).await?;
    render::prune(&report, out)?;
    let code = report.exit_code();
    Ok((report, code))
}

async fn key_cmd(resolved: &ResolvedRepo, k: KeyCmd, out: &Output) -> Result<()> {
    let repo = resolved.open().await?;
    match k {
        KeyCmd::List => {
            let slots = repo.key_slots().await?;
            render::key_slots(&slots, repo.slot(), out)?;
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
            let kdf = kdf(kdf_memory_mib, kdf_iterations);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_option_has_help_text() {
        let missing = backup_core::cli::options_without_help(&super::Cli::command());
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }
}
