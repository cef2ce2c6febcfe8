//! `restore_command`: `wal fetch` as PostgreSQL runs it during recovery, shared by
//! `lifeboat-restore` and `lifeboat-drill` (whose scratch servers call it): the prefetch spool
//! first, the repository otherwise, a detached worker for the next segments, and exit codes
//! recovery reads right.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::{GlobalFlags, Output, report_error};
use crate::config::ResolvedRepo;
use crate::engines::postgres::wal::header::SegmentHeader;
use crate::engines::postgres::wal::{self, ClusterId, PrefetchOptions, PrefetchSpool, WalName};
use crate::error::{Error, Result};
use crate::progress::human_bytes;

/// `wal fetch NAME PATH`.
#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// The WAL file name.
    pub name: String,
    /// Where PostgreSQL wants it.
    pub path: PathBuf,
    /// The cluster's system identifier (default: the data directory's, from global/pg_control).
    #[arg(long, value_name = "SYSID")]
    pub cluster: Option<String>,
    /// Segments to keep fetched ahead of recovery (0: none).
    #[arg(long, default_value_t = 8)]
    pub prefetch: usize,
    /// Run as the prefetch worker a fetch starts (internal).
    #[arg(long, hide = true)]
    pub prefetch_worker: bool,
    /// The cluster's WAL segment size, for the worker (internal).
    #[arg(long, hide = true)]
    pub segment_size: Option<u64>,
    /// The worker fetches the segments after this one (internal; default NAME).
    #[arg(long, hide = true)]
    pub prefetch_after: Option<String>,
}

/// `wal fetch` exits with this when something other than a missing file failed: PostgreSQL
/// takes any exit status above 125 as fatal and stops recovery, while any other non-zero
/// status reads as "not in the archive" and would end recovery early, promoting a server
/// that silently lacks the rest of the WAL.
pub const EXIT_FETCH_FAILED: u8 = 126;

/// `wal fetch` as restore_command: 0 fetched, 1 not in the archive, [`EXIT_FETCH_FAILED`]
/// for every other failure (a wrong key, an unreachable store, a damaged object…).
pub async fn restore_command(prog: &str, global: &GlobalFlags, args: &FetchArgs) -> ExitCode {
    let run = async {
        let (_, resolved) = global.resolve()?;
        wal_fetch(&resolved, args, &global.output()).await
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(prog, &e);
            let missing = matches!(e, Error::NotFound { .. });
            ExitCode::from(if missing { 1 } else { EXIT_FETCH_FAILED })
        }
    }
}

/// `wal fetch` (restore_command): from the prefetch spool when a worker put the segment
/// there (no key, no request), else from the repository; then a worker keeps the next
/// segments coming. As the worker (`--prefetch-worker`), prefetches and exits.
async fn wal_fetch(resolved: &ResolvedRepo, args: &FetchArgs, out: &Output) -> Result<()> {
    let name = WalName::parse(&args.name)?;
    let given = args.cluster.as_deref().map(ClusterId::parse).transpose()?;
    let spool = PrefetchSpool::beside(&args.path);
    if args.prefetch_worker {
        let repo = resolved.open().await?;
        let cluster = wal::cluster_for_fetch(&repo, &args.path, given).await?;
        let opts = PrefetchOptions {
            ahead: args.prefetch.max(1),
            ..Default::default()
        };
        let seg = args.segment_size.unwrap_or(wal::DEFAULT_SEGMENT_SIZE);
        let after = match &args.prefetch_after {
            Some(a) => WalName::parse(a)?,
            None => name,
        };
        wal::prefetch(&repo, cluster, &spool, &after, seg, &opts).await?;
        return Ok(());
    }
    let prefetching = name.is_segment() && args.prefetch > 0;
    let mut from_spool = None;
    if prefetching {
        spool.sweep(&name);
        from_spool = spool.take(&name, &args.path).or_else(|| {
            spool
                .worker_running()
                .then(|| {
                    spool.wait_and_take(&name, &args.path, std::time::Duration::from_secs(120))
                })
                .flatten()
        });
    }
    let (bytes, header) = match from_spool {
        Some(n) => (n, read_header(&args.path)),
        None => {
            let repo = resolved.open().await?;
            let cluster = wal::cluster_for_fetch(&repo, &args.path, given).await?;
            let data = wal::fetch(&repo, cluster, &name, &args.path).await?;
            (data.len() as u64, SegmentHeader::parse(&data))
        }
    };
    // A new worker picks up after what is spooled, once that runs low (an earlier worker
    // stopped at the end of the archive, or after a pause).
    let ahead: Vec<WalName> = spool
        .spooled()
        .into_iter()
        .filter(|n| n.timeline() == name.timeline() && *n > name)
        .collect();
    if prefetching
        && ahead.len() < (args.prefetch / 2).max(1)
        && !spool.worker_running()
        && let Some(h) = header
    {
        spawn_prefetch_worker(args, h, ahead.last().unwrap_or(&name))?;
    }
    out.result(
        &serde_json::json!({"fetched": name, "bytes": bytes, "prefetched": from_spool.is_some()}),
        || {
            format!(
                "{name} ({}) written to {}",
                human_bytes(bytes),
                args.path.display()
            )
        },
    );
    Ok(())
}

fn read_header(path: &Path) -> Option<SegmentHeader> {
    use std::io::Read;
    let mut buf = [0u8; 64];
    std::fs::File::open(path).ok()?.read_exact(&mut buf).ok()?;
    SegmentHeader::parse(&buf)
}

/// Starts this program again as the prefetch worker for the segments after this one, in its
/// own process group and detached from recovery's stdio, so `wal fetch` returns at once.
fn spawn_prefetch_worker(args: &FetchArgs, h: SegmentHeader, after: &WalName) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    argv.push("--prefetch-worker".into());
    argv.push("--prefetch-after".into());
    argv.push(after.as_str().into());
    argv.push("--segment-size".into());
    argv.push(h.segment_size.to_string().into());
    if args.cluster.is_none() {
        argv.push("--cluster".into());
        argv.push(h.cluster.to_string().into());
    }
    let spawn = || {
        std::process::Command::new(std::env::current_exe()?)
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
    };
    spawn().map_err(|e| Error::io("starting the prefetch worker", e))?;
    Ok(())
}
