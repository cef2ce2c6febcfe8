//! `lifeboat-restore`: list and inspect snapshots, plan and run restores, export raw streams.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
mod browse_cli;

use backup_core::cli::restore_command::{FetchArgs, restore_command};
use backup_core::cli::{
    DocCmd, EXIT_CODES, FilterFlags, GlobalFlags, Output, interrupted, print_snapshots, run_main,
};
use backup_core::commands::restore::{
    ApplyEvent, ApplyEvents, ApplyOptions, PlannedItem, RestoreOptions, RestorePlan, RestoredItem,
    Target, TargetState, apply, plan, preflight, restore_item,
};
use backup_core::config::{ConfigFile, PostgresConfig, RestoreDefaults};
use backup_core::engines::postgres::pitr::{self, PitrOptions, RecoveryTarget};
use backup_core::engines::postgres::recovery::{self, StartOptions};
use backup_core::engines::postgres::restore::PgRestoreOptions;
use backup_core::engines::redis::restore::RedisRestoreOptions;
use backup_core::manifest::Snapshot;
use backup_core::progress::{Progress, Ticker, human_bytes, human_duration, spawn_ticker};
use backup_core::repository::Repository;
use backup_core::secret::SecretSource;
use backup_core::sink::{FileSink, Sink, StdoutSink};
use chrono::Utc;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Restore Lifeboat snapshots: see what you have, plan, restore and verify every byte.
#[derive(Parser)]
#[command(name = "lifeboat-restore", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What snapshots exist, how old, how big.
    List {
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Items of one snapshot with sizes, hashes and recorded facts.
    Show {
        /// Snapshot id (prefix) or `latest` (this host's newest; see --host).
        snapshot: String,
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Show what `run` would do, touching nothing.
    Plan(Selection),
    /// Restore a snapshot (all items or --only / --skip); exit 8 when `--partial` left files out.
    Run {
        #[command(flatten)]
        sel: Selection,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask before replacing occupied targets with --force.
        #[arg(long, short)]
        yes: bool,
        /// Items restored at once when their targets are independent (1: one after another).
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        items_at_once: u16,
    },
    /// PostgreSQL WAL archive: `restore_command = 'lifeboat-restore wal fetch %f %p'`.
    #[command(subcommand)]
    Wal(WalCmd),
    /// Point-in-time recovery: unpack the base backup a target needs into a data directory,
    /// with the settings that replay the WAL archive to the target (default: its end).
    Pitr(PitrArgs),
    #[command(flatten)]
    Doc(DocCmd),
    /// List the entries of a volume item (from its file catalog; no data is read).
    Ls {
        /// Snapshot id (prefix) or `latest` (this host's newest holding ITEM).
        snapshot: String,
        /// The volume item.
        item: String,
        /// The directory to list (default: the volume's root).
        #[arg(default_value = ".")]
        path: String,
        /// Everything below PATH, not only its children.
        #[arg(long)]
        recursive: bool,
        /// Type, mode, owner, size and modification time of each entry.
        #[arg(long, short)]
        long: bool,
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Which snapshots hold a file: entries matching PATTERN in every snapshot's volume items
    /// (`*.conf` matches a name at any depth, `etc/**/*.conf` a path).
    Find {
        pattern: String,
        /// Only this volume item (repeatable).
        #[arg(long = "item", value_name = "NAME")]
        items: Vec<String>,
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Write one file of a volume item to stdout (or -o FILE), a directory as a tar stream;
    /// only the chunks that hold it are fetched.
    Dump {
        /// Snapshot id (prefix) or `latest` (this host's newest holding ITEM).
        snapshot: String,
        /// The volume item.
        item: String,
        /// The file or directory inside the volume.
        path: String,
        /// Write to this file instead of stdout (refused if it exists, unless --force).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Entries added (+), removed (-), changed (M: size, mtime, type or link) and with new
    /// mode or owner (U) between two snapshots, per volume item.
    Diff {
        /// The older snapshot (id prefix or `latest`).
        from: String,
        /// The newer snapshot.
        to: String,
        #[command(flatten)]
        filter: FilterFlags,
    },
    /// Write one item's raw stream (a tar for volumes) to a file or `-` for stdout.
    Export {
        /// Snapshot id (prefix) or `latest` (this host's newest holding ITEM).
        snapshot: String,
        /// The item to write.
        item: String,
        #[command(flatten)]
        filter: FilterFlags,
        /// File to write the item's raw stream to (`-` for stdout); refused if it exists, unless --force.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct PitrArgs {
    /// The base backup item (a `--pg-base` or `postgres_base` source).
    #[arg(value_name = "ITEM")]
    item: String,
    /// The data directory to create (refused if not empty, unless --force).
    #[arg(long, value_name = "DIR")]
    to_pgdata: PathBuf,
    /// Recover up to this moment (RFC 3339, e.g. 2026-12-04T09:30:00Z).
    #[arg(long, group = "target")]
    time: Option<String>,
    /// Recover up to this WAL location (X/Y).
    #[arg(long, group = "target")]
    lsn: Option<String>,
    /// Recover up to this transaction id.
    #[arg(long, group = "target")]
    xid: Option<String>,
    /// Recover up to this named restore point (pg_create_restore_point).
    #[arg(long = "name", value_name = "NAME", group = "target")]
    restore_point: Option<String>,
    /// Stop as soon as the base backup is consistent (no archived WAL needed).
    #[arg(long, group = "target")]
    immediate: bool,
    /// The timeline to follow: a number, `current` (the base backup's) or `latest` (the
    /// newest the archive has a history for).
    #[arg(long, default_value = "latest")]
    timeline: String,
    /// The restored server becomes the new primary: leave archive_mode as it was backed up,
    /// so that after promotion it archives into this repository on a new timeline (default:
    /// archive_mode = off, so a copy never writes into the archive).
    #[arg(long)]
    keep_archiving: bool,
    /// Start PostgreSQL on the restored directory, wait until recovery has reached the target
    /// and the server is promoted, and report the point reached.
    #[arg(long)]
    start: bool,
    /// With --start: the port to listen on.
    #[arg(long, default_value_t = 5432, requires = "start")]
    port: u16,
    /// With --start: the directory for the server's Unix socket (default: the restored
    /// configuration's).
    #[arg(long, value_name = "DIR", requires = "start")]
    socket_dir: Option<PathBuf>,
    /// With --start: directory of pg_ctl (default: the newest installed server).
    #[arg(long, value_name = "DIR", requires = "start")]
    pg_bin_dir: Option<PathBuf>,
    /// With --start: give up (and stop the server) if recovery has not ended by then (`30m`).
    #[arg(long, value_name = "DURATION", requires = "start")]
    start_timeout: Option<String>,
    /// Replace a non-empty data directory.
    #[arg(long)]
    force: bool,
    /// Only print the plan.
    #[arg(long)]
    dry_run: bool,
    /// The restored server's restore_command (default: this binary with this repository).
    #[arg(long, value_name = "CMD")]
    restore_command: Option<String>,
    #[command(flatten)]
    filter: FilterFlags,
}

impl PitrArgs {
    fn target(&self) -> Result<RecoveryTarget> {
        Ok(if let Some(t) = &self.time {
            let t = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                anyhow::anyhow!("--time {t:?}: {e} (use RFC 3339, e.g. 2026-12-04T09:30:00Z)")
            })?;
            RecoveryTarget::Time(t.to_utc())
        } else if let Some(l) = &self.lsn {
            RecoveryTarget::Lsn(l.clone())
        } else if let Some(x) = &self.xid {
            RecoveryTarget::Xid(x.clone())
        } else if let Some(n) = &self.restore_point {
            RecoveryTarget::Name(n.clone())
        } else if self.immediate {
            RecoveryTarget::Immediate
        } else {
            RecoveryTarget::Latest
        })
    }
}

#[derive(Subcommand)]
enum WalCmd {
    /// Write an archived WAL file (restore_command's %f) to PATH (%p); a file the archive does
    /// not have exits 1, as recovery expects. Segments after it are prefetched in the
    /// background into pg_wal/.lifeboat-prefetch, so the next calls just move them in.
    Fetch(FetchArgs),
}

#[derive(Args)]
struct Selection {
    /// Snapshot id (prefix) or `latest`: this host's newest holding the --only items (or,
    /// with a config file, every configured source).
    snapshot: String,
    #[command(flatten)]
    filter: FilterFlags,
    /// Restore only this item (repeatable).
    #[arg(long = "only", value_name = "NAME")]
    only: Vec<String>,
    /// Do not restore this item (repeatable).
    #[arg(long = "skip", value_name = "NAME")]
    skip: Vec<String>,
    /// Restore every item under DIR as DIR/<item>, instead of its original place.
    #[arg(long)]
    to: Option<PathBuf>,
    /// Replace targets that are not empty.
    #[arg(long)]
    force: bool,
    /// Volumes, as root: give files their stored numeric owner ids (default: the ids this
    /// host has for the stored user and group names, else the stored ids, as tar does).
    #[arg(long)]
    numeric_owner: bool,
    /// Volumes: restore only entries matching GLOB, with the directories above them (repeatable;
    /// `*.conf` matches a name at any depth, `etc/nginx/**` a path; a directory brings what is
    /// below it). Only the chunks that hold them are fetched. The target must be empty.
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Volumes: leave out entries matching GLOB (repeatable; as --include).
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// Volumes with missing or damaged chunks: restore every file that does not touch them,
    /// name the ones that do, and exit 8 (default: the item fails and nothing is placed).
    #[arg(long)]
    partial: bool,
    #[command(flatten)]
    pg: PgFlags,
    /// Write Redis items as dump.rdb into this data directory (prints the steps for AOF).
    #[arg(long, value_name = "DIR")]
    to_redis_dir: Option<PathBuf>,
    /// Load Redis items into a scratch redis-server of ours and check the key counts.
    #[arg(long)]
    to_scratch: bool,
    /// With --to-scratch: leave the scratch server running and print its address.
    #[arg(long)]
    keep: bool,
}

#[derive(Args)]
struct PgFlags {
    /// Restore PostgreSQL items into this server/database (libpq URL; without a database each
    /// item goes to its original database name).
    #[arg(long, value_name = "URL")]
    to_postgres: Option<String>,
    /// Drop and recreate the target database's objects (pg_restore --clean --if-exists).
    #[arg(long)]
    clean: bool,
    /// Parallel pg_restore (spools the dump to a temporary file first). Default: one per core
    /// when the dump is over 64 MiB and its spool fits in the temporary directory; 1 streams.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Restore only this table (repeatable; pg_restore --table).
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// Restore only this schema (repeatable; pg_restore --schema).
    #[arg(long = "schema", value_name = "SCHEMA")]
    schemas: Vec<String>,
    /// Do not restore object ownership.
    #[arg(long)]
    no_owner: bool,
    /// Also restore roles and tablespaces (pg_dumpall --globals-only items).
    #[arg(long)]
    globals: bool,
    /// Directory of pg_restore/psql to use.
    #[arg(long, value_name = "DIR")]
    pg_bin_dir: Option<PathBuf>,
    /// File holding the target's password (else PGPASSWORD or ~/.pgpass).
    #[arg(long, value_name = "FILE")]
    pg_password_file: Option<PathBuf>,
}

// glibc's malloc raises its mmap threshold after large frees, so the pipeline's MiB-sized
// chunk buffers pile up in per-thread arenas and RSS drifts upward with input size; mimalloc
// returns them and keeps peak RSS flat (docs/ARCHITECTURE.md, "Memory").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    run_main("lifeboat-restore", run(Cli::parse()))
}

/// Each subcommand is a library call and its rendering.
async fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Wal(WalCmd::Fetch(args)) = &cli.cmd {
        return Ok(restore_command("lifeboat-restore", &cli.global, args).await);
    }
    if let Cmd::Doc(d) = &cli.cmd {
        d.print(Cli::command())?;
        return Ok(ExitCode::SUCCESS);
    }
    let (config, resolved) = cli.global.resolve()?;
    let config = config.as_ref();
    let out = cli.global.output();
    let repo = resolved.open().await?;
    match cli.cmd {
        Cmd::List { filter } => {
            let listing = repo.snapshot_listing().await?;
            print_snapshots(
                &listing.filtered(&filter.for_listing()),
                &repo.location(),
                &out,
            )
        }
        Cmd::Show { snapshot, filter } => {
            let f = filter.for_latest(config, &[]);
            show(&repo.find_snapshot_matching(&snapshot, &f).await?, &out)?
        }
        Cmd::Plan(sel) => {
            let (_, p) = sel.plan(&repo, config).await?;
            print_plan(&p, &out)?;
        }
        Cmd::Run {
            sel,
            dry_run,
            yes,
            items_at_once,
        } => {
            let (snap, p) = sel.plan(&repo, config).await?;
            if dry_run || (!out.quiet && !out.json) {
                print_plan(&p, &out)?;
            }
            if dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            preflight(&p)?;
            if p.force
                && !p.conflicts().is_empty()
                && !yes
                && std::io::stdin().is_terminal()
                && !confirm(&p)?
            {
                bail!("restore cancelled; nothing was touched");
            }
            if restore(&repo, &snap, &p, items_at_once.into(), &out).await? {
                return Ok(ExitCode::from(8));
            }
        }
        Cmd::Pitr(args) => pitr_cmd(&repo, &cli.global, &resolved, config, &args, &out).await?,
        Cmd::Wal(WalCmd::Fetch(_)) | Cmd::Doc(_) => {
            unreachable!("handled before the repository is opened")
        }
        Cmd::Ls {
            snapshot,
            item,
            path,
            recursive,
            long,
            filter,
        } => {
            let f = filter.for_latest(config, std::slice::from_ref(&item));
            let snap = repo.find_snapshot_matching(&snapshot, &f).await?;
            browse_cli::ls(&repo, &snap, &item, &path, recursive, long, &out).await?
        }
        Cmd::Find {
            pattern,
            items,
            filter,
        } => browse_cli::find(&repo, &pattern, &items, &filter.for_listing(), &out).await?,
        Cmd::Dump {
            snapshot,
            item,
            path,
            output,
            force,
            filter,
        } => {
            let f = filter.for_latest(config, std::slice::from_ref(&item));
            let snap = repo.find_snapshot_matching(&snapshot, &f).await?;
            browse_cli::dump(&repo, &snap, &item, &path, output.as_deref(), force, &out).await?
        }
        Cmd::Diff { from, to, filter } => {
            let f = filter.for_latest(config, &[]);
            let a = repo.find_snapshot_matching(&from, &f).await?;
            let b = repo.find_snapshot_matching(&to, &f).await?;
            browse_cli::diff(&repo, &a, &b, &out).await?
        }
        Cmd::Export {
            snapshot,
            item,
            filter,
            output,
            force,
        } => {
            let f = filter.for_latest(config, std::slice::from_ref(&item));
            let snap = repo.find_snapshot_matching(&snapshot, &f).await?;
            export(&repo, &snap, &item, &output, force, &out).await?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pitr`: the plan, then (unless --dry-run) the restore.
async fn pitr_cmd(
    repo: &Repository,
    global: &GlobalFlags,
    resolved: &backup_core::config::ResolvedRepo,
    config: Option<&ConfigFile>,
    args: &PitrArgs,
    out: &Output,
) -> Result<()> {
    let restore_command = match &args.restore_command {
        Some(c) => c.clone(),
        None => default_restore_command(global, resolved)?,
    };
    let opts = PitrOptions {
        item: args.item.clone(),
        filter: args.filter.for_latest(config, &[]),
        pgdata: args.to_pgdata.clone(),
        target: args.target()?,
        timeline: args.timeline.parse()?,
        force: args.force,
        restore_command,
        keep_archiving: args.keep_archiving,
    };
    let start_timeout = args
        .start_timeout
        .as_deref()
        .map(backup_core::retention::parse_duration)
        .transpose()?
        .map(|d| d.to_std().unwrap_or_default());
    let p = pitr::plan(repo, &opts).await?;
    if out.json && args.dry_run {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(());
    }
    if !out.quiet && !out.json {
        print_pitr_plan(&p);
    }
    if args.dry_run {
        return Ok(());
    }
    let r = pitr::apply(repo, &p, args.force).await?;
    if !args.start {
        out.result(&serde_json::to_value(&r)?, || {
            format!(
                "restored {} ({}) into {}; start PostgreSQL on it to replay the archive to {} on timeline {}",
                r.item,
                human_bytes(r.bytes),
                r.pgdata.display(),
                r.target,
                r.timeline
            )
        });
        return Ok(());
    }
    if !out.quiet && !out.json {
        println!(
            "restored {} ({}) into {}; starting PostgreSQL on port {} to replay the archive",
            r.item,
            human_bytes(r.bytes),
            r.pgdata.display(),
            args.port
        );
    }
    let start = StartOptions {
        pgdata: r.pgdata.clone(),
        bin_dir: args.pg_bin_dir.clone(),
        port: args.port,
        listen: None,
        socket_dir: args.socket_dir.clone(),
        timeout: start_timeout,
    };
    let quiet = out.quiet || out.json;
    let rec = tokio::task::spawn_blocking(move || {
        recovery::start_and_wait(&start, &|line| {
            if !quiet {
                eprintln!("  {}", line.trim());
            }
        })
    })
    .await??;
    out.result(&serde_json::json!({"restore": r, "recovery": rec}), || {
        recovery_summary(&rec)
    });
    Ok(())
}

fn print_pitr_plan(p: &pitr::PitrPlan) {
    println!(
        "base backup {} of snapshot {} (finished {}, start {} on timeline {}){}\nrecover to {} on timeline {} ({}), WAL archived up to {}{}\ninto {} ({:?})",
        p.item,
        p.snapshot.short(),
        p.base_finished.format("%Y-%m-%d %H:%M:%S UTC"),
        p.base.start_lsn.as_deref().unwrap_or("?"),
        p.base.timeline.unwrap_or(1),
        p.cluster
            .map(|c| format!(" of cluster {c}"))
            .unwrap_or_default(),
        p.target,
        p.timeline,
        p.path,
        p.newest_wal.as_deref().unwrap_or("nothing"),
        if p.replay_segments > 0 {
            format!(
                "; replay reads up to {} segments ({})",
                p.replay_segments,
                human_bytes(p.replay_bytes)
            )
        } else {
            String::new()
        },
        p.pgdata.display(),
        p.pgdata_state
    );
    for s in &p.settings {
        println!("  {s}");
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
}

fn recovery_summary(r: &recovery::RecoveryReport) -> String {
    let mut s = format!("recovery finished in {}: ", human_duration(r.seconds));
    if let Some(stop) = &r.stopped {
        s.push_str(stop);
        s.push_str("; ");
    }
    s.push_str(&format!(
        "replayed up to {}, last transaction committed {}",
        r.redo_done_at.as_deref().unwrap_or("?"),
        r.last_transaction.as_deref().unwrap_or("(none replayed)")
    ));
    if let Some(t) = r.new_timeline {
        s.push_str(&format!("; promoted on timeline {t}"));
    }
    s.push_str(&format!(
        "; PostgreSQL is running on port {} ({})",
        r.port,
        r.pgdata.display()
    ));
    s
}

/// `restore_command` for the restored server: this binary, reading the same repository with
/// the same key file or config, as the server's user will run it.
fn default_restore_command(
    global: &GlobalFlags,
    resolved: &backup_core::config::ResolvedRepo,
) -> Result<String> {
    let exe = std::env::current_exe()?;
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut cmd = format!("{} --quiet --no-cache", exe.display());
    if let Some(c) = &global.config {
        cmd.push_str(&format!(" --config {}", abs(c).display()));
    } else {
        cmd.push_str(&format!(" -r {}", resolved.url));
        match resolved.secret.as_ref() {
            Some(SecretSource::PasswordFile(p)) => {
                cmd.push_str(&format!(" --password-file {}", abs(p).display()))
            }
            Some(SecretSource::KeyFile(p)) => {
                cmd.push_str(&format!(" --key-file {}", abs(p).display()))
            }
            _ => bail!(
                "cannot write a restore_command for this key source: use --config, --password-file or --key-file, or give --restore-command"
            ),
        }
    }
    cmd.push_str(" wal fetch --cluster {cluster} %f %p");
    Ok(cmd)
}

fn show(s: &Snapshot, out: &Output) -> Result<()> {
    if out.json {
        let mut v = serde_json::to_value(s)?;
        // Chunk lists are long and say nothing to a reader; count them instead.
        if let Some(items) = v.get_mut("items").and_then(|i| i.as_array_mut()) {
            for (it, orig) in items.iter_mut().zip(&s.items) {
                it["chunks"] = orig.chunks.len().into();
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "snapshot {}\n  time     {} UTC ({} ago)\n  host     {}\n  tags     {}\n  program  {}\n  size     {}",
        s.id,
        s.time.format("%Y-%m-%d %H:%M:%S"),
        human_duration((Utc::now() - s.time).num_seconds() as f64),
        s.host,
        s.tags.join(","),
        s.program,
        human_bytes(s.size())
    );
    for i in &s.items {
        println!(
            "\nitem {} ({}, {})\n  size     {} in {} chunks\n  sha256   {}\n  took     {}",
            i.name,
            i.kind,
            i.format,
            human_bytes(i.size),
            i.chunks.len(),
            i.sha256,
            human_duration((i.finished - i.started).num_milliseconds() as f64 / 1000.0)
        );
        for (k, v) in &i.facts {
            println!("  {k:<26} {v}");
        }
    }
    Ok(())
}

/// `export`: one item's raw stream to a file or stdout, verified.
async fn export(
    repo: &Repository,
    snap: &Snapshot,
    item: &str,
    output: &Path,
    force: bool,
    out: &Output,
) -> Result<()> {
    let it = snap.require(item)?;
    let to_stdout = output.as_os_str() == "-";
    let sink: Box<dyn Sink> = if to_stdout {
        Box::new(StdoutSink::new())
    } else {
        Box::new(FileSink::create(&it.name, output, force).await?)
    };
    let progress = Arc::new(Progress::default());
    let show = !out.quiet && !out.json && !to_stdout && std::io::stderr().is_terminal();
    let opts = ApplyOptions {
        progress: show.then(|| progress.clone()),
        ..Default::default()
    };
    let ticker = show.then(|| spawn_ticker(progress));
    let r = tokio::select! {
        r = restore_item(repo, snap.id, it, sink, &opts) => r,
        sig = interrupted() => {
            drop(ticker);
            if to_stdout {
                bail!("interrupted by {sig}; the data already written to stdout is incomplete: discard it");
            }
            bail!("interrupted by {sig}; {} was left as it was (the partial copy was removed)", output.display());
        }
    };
    drop(ticker);
    if let Err(e) = r {
        if to_stdout {
            eprintln!(
                "lifeboat-restore: the data already written to stdout is incomplete or unverified: discard it"
            );
        }
        return Err(e.into());
    }
    if !to_stdout {
        out.result(&serde_json::json!({"item": it.name, "size": it.size, "sha256": it.sha256, "output": output}), || {
            format!("exported {} ({}, sha256 {} verified) to {}", it.name, human_bytes(it.size), it.sha256, output.display())
        });
    }
    Ok(())
}

impl Selection {
    /// The snapshot these flags select and the restore plan for it.
    async fn plan(
        &self,
        repo: &Repository,
        config: Option<&ConfigFile>,
    ) -> Result<(Snapshot, RestorePlan)> {
        // `latest` must hold what will be restored: the --only items, else every source the
        // config names (a partial run must not stand in for the last full one).
        let wanted: Vec<String> = match (self.only.is_empty(), config) {
            (false, _) => self.only.clone(),
            (true, Some(c)) => c
                .sources
                .keys()
                .filter(|k| !self.skip.contains(k))
                .cloned()
                .collect(),
            (true, None) => Vec::new(),
        };
        let filter = self.filter.for_latest(config, &wanted);
        let snap = repo.find_snapshot_matching(&self.snapshot, &filter).await?;
        let defaults = match config {
            Some(c) => c.restore_defaults(&snap)?,
            None => RestoreDefaults::default(),
        };
        let p = plan(&snap, &self.options(defaults)?).await?;
        Ok((snap, p))
    }

    /// Flags over the config file's restore settings.
    fn options(&self, defaults: RestoreDefaults) -> Result<RestoreOptions> {
        let mut tools = defaults.tools.unwrap_or_default();
        if let Some(d) = &self.pg.pg_bin_dir {
            tools.bin_dir = Some(d.clone());
        }
        if let Some(f) = &self.pg.pg_password_file {
            let mut cfg = PostgresConfig::from_url("");
            cfg.password_file = Some(f.clone());
            tools.password = cfg.tools()?.password;
        }
        Ok(RestoreOptions {
            only: self.only.clone(),
            skip: self.skip.clone(),
            to: self.to.clone(),
            force: self.force,
            numeric_owner: self.numeric_owner,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            partial: self.partial,
            restore_commands: defaults.commands,
            postgres: PgRestoreOptions {
                url: self.pg.to_postgres.clone(),
                item_urls: defaults.postgres_urls,
                clean: self.pg.clean,
                jobs: self.pg.jobs.map_or(0, usize::from),
                tables: self.pg.tables.clone(),
                schemas: self.pg.schemas.clone(),
                no_owner: self.pg.no_owner,
                globals: self.pg.globals,
                tools,
            },
            redis: RedisRestoreOptions {
                dir: self.to_redis_dir.clone(),
                scratch: self.to_scratch,
                keep: self.keep,
            },
        })
    }
}

fn print_plan(p: &RestorePlan, out: &Output) -> Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    if out.quiet {
        return Ok(());
    }
    let picked = if p.include.is_empty() && p.exclude.is_empty() {
        String::new()
    } else {
        let mut f: Vec<String> = p.include.iter().map(|g| format!("--include {g}")).collect();
        f.extend(p.exclude.iter().map(|g| format!("--exclude {g}")));
        format!(
            " (the items' size: only the entries of {} are fetched)",
            f.join(" ")
        )
    };
    println!(
        "restore plan: snapshot {} of {} UTC from {}, {} to restore{picked}",
        p.snapshot.short(),
        p.snapshot_time.format("%Y-%m-%d %H:%M:%S"),
        p.host,
        human_bytes(p.bytes)
    );
    for i in &p.items {
        let state = match i.target_state {
            TargetState::Missing => "new",
            TargetState::Empty => "empty",
            TargetState::Occupied if p.force => "REPLACED (--force)",
            TargetState::Occupied => "NOT EMPTY: refused without --force",
            TargetState::NotApplicable => "piped",
        };
        let state = match (&i.postgres, i.target_state) {
            (Some(pg), TargetState::Occupied) if p.postgres.clean => {
                format!(
                    "{} user tables, objects REPLACED (--clean); server {}",
                    pg.user_tables, pg.server_version
                )
            }
            (Some(pg), TargetState::Occupied) => format!(
                "NOT EMPTY ({} user tables): refused without --clean or --force; server {}",
                pg.user_tables, pg.server_version
            ),
            (Some(pg), s) => format!(
                "{}; server {}",
                if s == TargetState::Missing {
                    "database will be created"
                } else {
                    "empty database"
                },
                pg.server_version
            ),
            _ => state.to_string(),
        };
        println!(
            "  {:<20} {:<8} {:>10}  -> {} [{state}]",
            i.name,
            i.kind.to_string(),
            human_bytes(i.size),
            i.target
        );
        if let Some(pg) = &i.postgres {
            match &pg.incompatible {
                Some(why) => println!("  {:<20} REFUSED: {why}", ""),
                None => println!(
                    "  {:<20} pg_restore --jobs {} ({})",
                    "", pg.jobs, pg.jobs_reason
                ),
            }
        }
    }
    Ok(())
}

fn confirm(p: &RestorePlan) -> Result<bool> {
    eprint!(
        "replace {} occupied target(s)? type 'yes' to continue: ",
        p.conflicts().len()
    );
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

/// What a restore has done so far, for the messages of a failure or an interruption.
#[derive(Default)]
struct Restoring {
    ticker: Option<Ticker>,
    restored: Vec<String>,
    in_flight: Vec<PlannedItem>,
    failed: usize,
    not_started: Vec<String>,
}

async fn restore(
    repo: &Repository,
    snap: &Snapshot,
    p: &RestorePlan,
    items_at_once: usize,
    out: &Output,
) -> Result<bool> {
    let progress = Arc::new(Progress::default());
    let text = !out.quiet && !out.json;
    let state: Arc<std::sync::Mutex<Restoring>> = Arc::default();
    let events = {
        let state = state.clone();
        ApplyEvents(Arc::new(move |e| {
            on_event(&mut state.lock().unwrap(), e, text)
        }))
    };
    let ticker = out.progress(&progress);
    let opts = ApplyOptions {
        progress: ticker.is_some().then(|| progress.clone()),
        events: Some(events),
        items_at_once,
        ..Default::default()
    };
    state.lock().unwrap().ticker = ticker;
    // On SIGINT/SIGTERM the restore future is dropped: every item in flight removes its
    // partial copy, and targets are only ever replaced by a finished, verified one.
    let result = tokio::select! {
        r = apply(repo, snap, p, &opts) => r,
        sig = interrupted() => {
            let mut st = state.lock().unwrap();
            st.ticker = None;
            bail!("{}", interrupted_message(sig, &st.in_flight, &st.restored));
        }
    };
    let mut st = state.lock().unwrap();
    st.ticker = None;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if !st.restored.is_empty() {
                eprintln!(
                    "lifeboat-restore: restored and verified: {}",
                    st.restored.join(", ")
                );
            }
            if !st.not_started.is_empty() {
                eprintln!(
                    "lifeboat-restore: not started (after the failure): {}",
                    st.not_started.join(", ")
                );
            }
            return Err(e.into());
        }
    };
    out.summary(
        serde_json::json!({"snapshot": snap.id, "items": report.items}),
        String::new,
    );
    Ok(report.items.iter().any(|i| !i.damaged.is_empty()))
}

fn on_event(st: &mut Restoring, e: ApplyEvent<'_>, text: bool) {
    match e {
        ApplyEvent::Started(item) => {
            if let Some(pg) = item.postgres.as_ref().filter(|pg| pg.jobs > 1)
                && text
            {
                eprintln!(
                    "note: {}: pg_restore --jobs {} ({}); the dump ({}) is spooled to {} first",
                    item.name,
                    pg.jobs,
                    pg.jobs_reason,
                    human_bytes(item.size),
                    std::env::temp_dir().display()
                );
            }
            st.in_flight.push(item.clone());
        }
        ApplyEvent::Restored(item, r) => {
            st.in_flight.retain(|i| i.name != item.name);
            st.restored.push(r.name.clone());
            if text {
                clear_line(st.ticker.is_some());
                print_restored(item, r);
            }
        }
        ApplyEvent::Failed(item, err) => {
            st.in_flight.retain(|i| i.name != item.name);
            st.failed += 1;
            clear_line(st.ticker.is_some());
            // The first failure's error ends the run and is printed then; later ones only here.
            print_failed(item, (st.failed > 1).then_some(err));
        }
        ApplyEvent::NotStarted(item) => st.not_started.push(item.name.clone()),
    }
}

/// Clears the progress line before a message, so the two do not share a line.
fn clear_line(ticking: bool) {
    if ticking {
        eprint!("\r\x1b[2K");
    }
}

fn print_restored(item: &PlannedItem, r: &RestoredItem) {
    if let Some(s) = &r.selection {
        println!(
            "restored {} entries of {} ({} of files, {} entries with the directories they need) to {} in {}: fetched {} of {} chunks ({}), each verified",
            s.entries,
            r.name,
            human_bytes(s.file_bytes),
            s.entries_written,
            item.target,
            human_duration(r.seconds),
            s.chunks_fetched,
            s.chunks_total,
            human_bytes(s.bytes_fetched)
        );
        print_untar_notes(r);
        print_damaged(r);
        return;
    }
    let rows = r
        .sink
        .verified_tables
        .map(|n| format!(", row counts of {n} tables match the backup"))
        .unwrap_or_default();
    println!(
        "restored {} ({}) to {} in {}, sha256 verified{rows}",
        r.name,
        human_bytes(r.size),
        item.target,
        human_duration(r.seconds)
    );
    if let Some(note) = &r.sink.note {
        println!("  next: {}", note.replace('\n', "\n  "));
    }
    print_untar_notes(r);
}

/// What `--partial` left out.
fn print_damaged(r: &RestoredItem) {
    if r.damaged.is_empty() {
        return;
    }
    eprintln!(
        "  NOT restored: {} entries of {} lie in missing or damaged chunks (`lifeboat-backup check --read-data` names them; an older snapshot may hold these files):",
        r.damaged.len(),
        r.name
    );
    for p in r.damaged.iter().take(50) {
        eprintln!("    {p}");
    }
    if r.damaged.len() > 50 {
        eprintln!(
            "    … and {} more (the JSON report lists all)",
            r.damaged.len() - 50
        );
    }
}

/// Warnings of an unpacked volume and leftovers of earlier restores.
fn print_untar_notes(r: &RestoredItem) {
    if let Some(u) = r.sink.untar.as_ref().filter(|u| u.warnings_total > 0) {
        for w in &u.warnings {
            eprintln!("  warning: {w}");
        }
        let more = u.warnings_total - u.warnings.len() as u64;
        if more > 0 {
            eprintln!("  warning: … and {more} more (the JSON report lists the first ones)");
        }
    }
    if let Some(l) = r.sink.leftovers.as_ref().and_then(|l| l.describe()) {
        println!("  note: {l}");
    }
}

/// What an interrupted restore left: each item in flight (its partial copy removed, or named
/// if it could not be) and the items already restored.
fn interrupted_message(sig: &str, in_flight: &[PlannedItem], done: &[String]) -> String {
    let mut msg = format!("interrupted by {sig}");
    for item in in_flight {
        let left = match &item.target {
            Target::Directory(p) | Target::File(p) => {
                let stray = backup_core::sink::partials_of(p);
                if stray.is_empty() {
                    format!(
                        "its partial copy next to {} was removed and the target left as it was",
                        p.display()
                    )
                } else {
                    let names: Vec<String> =
                        stray.iter().map(|p| p.display().to_string()).collect();
                    format!(
                        "its partial copy could not be removed: {} (delete it)",
                        names.join(", ")
                    )
                }
            }
            _ if item.partial_on_failure() => {
                format!("{} may have received partial data", item.target)
            }
            _ => format!("{} was left as it was", item.target),
        };
        msg.push_str(&format!("; item {} stopped: {left}", item.name));
    }
    if !done.is_empty() {
        msg.push_str(&format!("; already restored: {}", done.join(", ")));
    }
    msg
}

fn print_failed(item: &PlannedItem, err: Option<&backup_core::Error>) {
    let what = if item.partial_on_failure() {
        format!("{} may have received partial data", item.target)
    } else {
        format!("{} was left as it was", item.target)
    };
    match err {
        Some(e) => eprintln!("lifeboat-restore: item {} FAILED ({e}); {what}", item.name),
        None => eprintln!("lifeboat-restore: item {} FAILED; {what}", item.name),
    }
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
