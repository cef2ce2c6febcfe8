//! `lifeboat-drill`: restore a snapshot into scratch servers, prove it is good, report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use backup_core::cli::{EXIT_CODES, interrupted, run_main};
use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::config::{PostgresConfig, RedisConfig, RepositoryConfig};
use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};
use backup_core::engines::redis::scratch::{ScratchRedis, ScratchRedisOptions, seed_fixture};
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::scratch::{find_program, temp_dir};
use backup_core::secret::SecretSource;
use backup_core::source::Source;
use backup_core::store::{LocalStore, Store};
use clap::{Parser, Subcommand};
use drills::file::{Budgets, Checks, RedisCheck, Reports, ShellCheck, SqlCheck, Targets};
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
}

fn main() -> ExitCode {
    run_main("lifeboat-drill", run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let opts = DrillOptions { keep: cli.keep };
    let (file, _demo) = match cli.cmd {
        Cmd::Run { file } => (DrillFile::load(&file)?, None),
        Cmd::Demo => {
            let d = demo_setup().await?;
            (d.file.clone(), Some(d))
        }
    };
    let report = tokio::select! {
        r = run_drill(&file, &opts) => r?,
        sig = interrupted() => {
            anyhow::bail!("interrupted by {sig}; scratch servers and directories were removed");
        }
    };
    print_report(&report, cli.json)?;
    Ok(ExitCode::from(if report.success() {
        0
    } else if !report.checks_passed {
        8
    } else {
        9
    }))
}

fn print_report(report: &DrillReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.markdown());
    }
    Ok(())
}

/// The demo's sources and repository; removed on drop.
struct Demo {
    file: DrillFile,
    dir: PathBuf,
    _pg: Option<ScratchPostgres>,
    _redis: Option<ScratchRedis>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn demo_setup() -> Result<Demo> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let dir = temp_dir("lifeboat-demo")?;
    let pw = dir.join("password");
    std::fs::write(&pw, "demo passphrase\n")?;
    let repo_path = dir.join("repo");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&repo_path));
    let secret = SecretSource::PasswordFile(pw.clone()).resolve()?;
    let repo = Repository::init(
        store,
        &secret,
        InitOptions {
            cache: CacheOptions {
                disabled: true,
                dir: None,
            },
            ..Default::default()
        },
    )
    .await?;

    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(VolumeSource::new(
        "sample",
        fixtures.join("sample"),
        VolumeOptions {
            exclude: vec!["*.tmp".into()],
            ..Default::default()
        },
    ))];
    let mut checks = Checks {
        shell: vec![ShellCheck {
            command: "test -s \"$LIFEBOAT_DRILL_DIR/restored/sample/etc/app.conf\"".into(),
            name: Some("restored config file is there".into()),
        }],
        ..Default::default()
    };
    let pg = if server_bin_dir().is_some() {
        eprintln!("demo: starting a scratch PostgreSQL with fixtures/postgres/schema.sql");
        let pg = tokio::task::spawn_blocking(ScratchPostgres::start).await??;
        pg.psql("postgres", "CREATE DATABASE app")?;
        pg.psql_file("app", &fixtures.join("postgres/schema.sql"))?;
        sources.extend(
            PostgresConfig::from_url(&pg.url("app"))
                .sources("app")
                .await?,
        );
        checks.sql.push(SqlCheck {
            item: "app".into(),
            sql: "select count(*) from sales.orders where amount > 0".into(),
            expect: "> 0".into(),
            name: Some("orders with an amount exist".into()),
        });
        Some(pg)
    } else {
        eprintln!(
            "demo: PostgreSQL server binaries not found (install postgresql); the drill runs without a database"
        );
        None
    };
    let redis = if find_program("redis-server", &[]).is_some() {
        eprintln!("demo: starting a scratch redis-server with the fixture data set");
        let r = ScratchRedis::start(ScratchRedisOptions::default()).await?;
        seed_fixture(&mut r.connect_as(None, None).await.map_err(anyhow::Error::msg)?)
            .await
            .map_err(anyhow::Error::msg)?;
        sources.push(Box::new(RedisConfig::from_url(&r.url()).source("cache")?));
        checks.redis.push(RedisCheck {
            item: "cache".into(),
            command: vec!["HGET".into(), "db5:cfg".into(), "mode".into()],
            expect: "blue".into(),
            db: 5,
            name: Some("db 5 config hash restored".into()),
        });
        Some(r)
    } else {
        eprintln!(
            "demo: redis-server not found (install redis-server); the drill runs without Redis"
        );
        None
    };
    eprintln!("demo: backing up into {}", repo_path.display());
    backup(&repo, sources, &BackupOptions::default())
        .await
        .context("demo backup")?;
    let file = DrillFile {
        repository: Some(RepositoryConfig {
            url: repo_path.display().to_string(),
            password_file: Some(pw),
            password_env: None,
            password_command: None,
            key_file: None,
            cache_dir: None,
            s3: Default::default(),
        }),
        config: None,
        snapshot: "latest".into(),
        items: Vec::new(),
        budgets: Budgets {
            max_snapshot_age: Some("1h".into()),
            max_restore_time: Some("15m".into()),
        },
        targets: Targets::default(),
        checks,
        reports: Reports::default(),
    };
    eprintln!("demo: drilling the snapshot\n");
    Ok(Demo {
        file,
        dir,
        _pg: pg,
        _redis: redis,
    })
}
