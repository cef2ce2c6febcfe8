//! `lifeboat-drill`: restore a snapshot into scratch servers, prove it is good, report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use backup_core::cli::restore_command::{FetchArgs, restore_command};
use backup_core::cli::{
    DocCmd, EXIT_CODES, GlobalFlags, Output, failed_ending, interrupted, print_hooks, run_main,
};
use backup_core::hooks::RunHooks;
use backup_core::supervise::{Action, Ending, Supervisor};
use clap::{CommandFactory, Parser, Subcommand};
use drills::{DrillFile, DrillOptions, DrillReport, run_drill};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DRILL_EXIT: &str = "Drill exit codes: 0 every check passed and budgets held, 8 a restore or check failed, \
9 a budget (RPO/RTO) was exceeded; errors before the drill could run use the exit codes below.";

/// Restore drills: restore the newest backup into scratch servers and prove it is good.
#[derive(Parser)]
#[command(name = "lifeboat-drill", version, about, after_help = format!("{DRILL_EXIT}\n{EXIT_CODES}"))]
struct Cli {
    /// Print the report as JSON instead of Markdown.
    #[arg(long, global = true)]
    json: bool,
    /// Leave scratch servers and directories running/in place and print where they are.
    #[arg(long, global = true)]
    keep: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the drill described by a drill file (see drills/examples/).
    Run { file: PathBuf },
    /// Back up fixture PostgreSQL, Redis and a volume into a temporary repository, then drill it.
    Demo,
    #[command(flatten)]
    Doc(DocCmd),
}

/// `lifeboat-drill wal-fetch`: the restore_command of the clusters a point-in-time drill
/// starts (the same as `lifeboat-restore wal fetch`, so a drill needs no other binary).
#[derive(Parser)]
#[command(name = "lifeboat-drill wal-fetch", hide = true)]
struct WalFetch {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(flatten)]
    fetch: FetchArgs,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "wal-fetch") {
        let w = WalFetch::parse_from(std::env::args_os().skip(1));
        return run_main("lifeboat-drill", async move {
            Ok::<_, anyhow::Error>(restore_command("lifeboat-drill", &w.global, &w.fetch).await)
        });
    }
    run_main("lifeboat-drill", run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let opts = DrillOptions { keep: cli.keep };
    let (file, _demo) = match cli.cmd {
        Cmd::Doc(d) => {
            d.print(Cli::command())?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Run { file } => (DrillFile::load(&file)?, None),
        Cmd::Demo => {
            let d = drills::demo::setup().await?;
            (d.file.clone(), Some(d))
        }
    };
    let mut sup = Supervisor::new(
        Action::Drill,
        &file.repository_url(),
        backup_core::hostname(),
        RunHooks::new(file.hooks.clone(), Vec::new()),
        file.monitor.clone(),
        file.reports.pushgateway.clone(),
    );
    let out = Output {
        json: cli.json,
        quiet: false,
    };
    sup.start().await;
    let before = sup.before().await;
    print_hooks(&sup.drain_hooks(), &out);
    let result = match before {
        Ok(()) => drill(&file, &opts).await,
        Err(e) => Err(e.into()),
    };
    // A report that cannot be printed (stdout gone) must not skip the closing hooks: their
    // `finally` may undo what `before` did.
    let printed = match &result {
        Ok(report) => print_report(report, cli.json),
        Err(_) => Ok(()),
    };
    let ending = ending(&result);
    let end = sup.end(&ending).await;
    print_hooks(&sup.drain_hooks(), &out);
    let metrics = match &result {
        Ok(r) => r.prometheus(),
        Err(_) => drills::report::prometheus_not_run(),
    };
    for w in sup.finish(&ending, &metrics).await {
        eprintln!("lifeboat-drill: warning: {w}");
    }
    let report = result?;
    end?;
    printed?;
    Ok(ExitCode::from(exit_code(&report)))
}

/// The drill, stopped by SIGINT or SIGTERM (which removes its scratch servers).
async fn drill(file: &DrillFile, opts: &DrillOptions) -> Result<DrillReport> {
    tokio::select! {
        r = run_drill(file, opts) => Ok(r?),
        sig = interrupted() => {
            anyhow::bail!("interrupted by {sig}; scratch servers and directories were removed");
        }
    }
}

fn exit_code(report: &DrillReport) -> u8 {
    if report.success() {
        0
    } else if !report.checks_passed {
        8
    } else {
        9
    }
}

/// How the drill reads to its hooks and monitors.
fn ending(result: &Result<DrillReport>) -> Ending {
    match result {
        Ok(r) => {
            let failed: Vec<String> = r
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{} {}: {}", c.item, c.name, c.detail))
                .collect();
            let code = exit_code(r);
            Ending {
                exit_code: code,
                error: (code != 0).then(|| match failed.is_empty() {
                    true => "a budget (RPO/RTO) was exceeded".to_string(),
                    false => format!("failed checks: {}", failed.join("; ")),
                }),
                snapshot: Some(r.snapshot.clone()),
                log: r.markdown(),
                ..Default::default()
            }
        }
        Err(e) => failed_ending(&**e),
    }
}

fn print_report(report: &DrillReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.markdown());
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
