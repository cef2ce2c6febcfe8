//! Command-line glue shared by `lifeboat-backup`, `lifeboat-restore` and `lifeboat-drill`:
//! repository flags, output mode and error reporting with documented exit codes.

pub mod restore_command;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::progress::Ticker;

use clap::Args;

use crate::config::RepoArgs;

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 ok, 1 failure, 2 usage or configuration error, 3 wrong or missing key, \
4 another run holds the lock, 5 repository not found, 6 integrity problem (corrupt or missing data), \
7 restore target refused (not empty, unsafe archive), 8 snapshot written without some data: sources that failed (run --partial) or files that could not be read; a restore --partial that left damaged files out";

/// `--host`, `--any-host`, `--tag`, `--source`: which snapshots a listing shows and `latest`
/// may name.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterFlags {
    /// Only snapshots of this host (`latest` defaults to this machine, or the config's
    /// [backup] host).
    #[arg(long, value_name = "NAME", conflicts_with = "any_host")]
    pub host: Option<String>,
    /// Snapshots of any host (for `latest`: the newest, whichever machine made it).
    #[arg(long)]
    pub any_host: bool,
    /// Only snapshots with this tag (repeatable: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots holding this source or item (repeatable: all of them).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
}

impl FilterFlags {
    /// The filter `latest` resolves with: this host unless told otherwise, holding the
    /// `--source`s and `items` (what the command will use).
    pub fn for_latest(
        &self,
        config: Option<&crate::config::ConfigFile>,
        items: &[String],
    ) -> crate::repository::SnapshotFilter {
        let host = if self.any_host {
            None
        } else {
            Some(self.host.clone().unwrap_or_else(|| {
                config
                    .and_then(|c| c.backup.host.clone())
                    .unwrap_or_else(crate::hostname)
            }))
        };
        let mut wanted = self.sources.clone();
        wanted.extend(items.iter().filter(|i| !self.sources.contains(i)).cloned());
        crate::repository::SnapshotFilter {
            host,
            tags: self.tags.clone(),
            items: wanted,
        }
    }

    /// The filter a listing applies: only what was asked for.
    pub fn for_listing(&self) -> crate::repository::SnapshotFilter {
        crate::repository::SnapshotFilter {
            host: self.host.clone(),
            tags: self.tags.clone(),
            items: self.sources.clone(),
        }
    }
}

/// Flags every Lifeboat binary takes: repository, config file, output mode.
#[derive(Args, Debug, Clone)]
pub struct GlobalFlags {
    #[command(flatten)]
    pub repo: RepoFlags,
    /// Configuration file (TOML); see fixtures/lifeboat.toml.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "LIFEBOAT_CONFIG",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Print nothing on success (for cron); errors still go to stderr.
    #[arg(long, short, global = true, help_heading = "Global options")]
    pub quiet: bool,
}

impl GlobalFlags {
    /// The output mode these flags ask for.
    pub fn output(&self) -> Output {
        // An error that ends the process is reported in the output's form too.
        JSON_ERRORS.store(self.json, std::sync::atomic::Ordering::Relaxed);
        Output {
            json: self.json,
            quiet: self.quiet,
        }
    }

    /// Loads the config file (if any) and resolves the repository selection.
    pub fn resolve(
        &self,
    ) -> crate::Result<(
        Option<crate::config::ConfigFile>,
        crate::config::ResolvedRepo,
    )> {
        let config = self
            .config
            .as_deref()
            .map(crate::config::ConfigFile::load)
            .transpose()?;
        let resolved = self.repo.args().resolve(config.as_ref())?;
        Ok((config, resolved))
    }
}

/// Repository selection flags; each has an environment fallback (see [`crate::config`]).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Repository (global)")]
pub struct RepoFlags {
    /// Repository location (or LIFEBOAT_REPOSITORY).
    #[arg(long, short = 'r', global = true)]
    pub repo: Option<String>,
    /// File holding the passphrase (or LIFEBOAT_PASSWORD_FILE).
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// Command printing the passphrase (or LIFEBOAT_PASSWORD_COMMAND).
    #[arg(long, global = true)]
    pub password_command: Option<String>,
    /// Key file instead of a passphrase (or LIFEBOAT_KEY_FILE).
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
    /// Where snapshot manifests and volume file caches live (default ~/.cache/lifeboat).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Read everything from the repository and every file of a volume, cache nothing.
    #[arg(long, global = true)]
    pub no_cache: bool,
}

impl RepoFlags {
    /// As library options.
    pub fn args(&self) -> RepoArgs {
        RepoArgs {
            repo: self.repo.clone(),
            password_file: self.password_file.clone(),
            password_command: self.password_command.clone(),
            key_file: self.key_file.clone(),
            cache_dir: self.cache_dir.clone(),
            no_cache: self.no_cache,
        }
    }
}

/// Human or JSON output, quiet or not.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

/// Set by `--json`: the error that ends the process goes to stderr as one JSON line.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Output {
    /// The closing summary of a long command (run, prune, restore). With `--json`, stdout is
    /// JSON lines in restic's shape: `{"message_type":"status",…}` while it runs, then this
    /// one line, `{"message_type":"summary",…}`; else the human text unless quiet.
    pub fn summary(&self, json: serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", json_line("summary", json));
        } else if !self.quiet {
            // Commands that said everything on the way have no closing text.
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    /// The progress display a long command shows: JSON status lines on stdout with `--json`,
    /// a redrawn line on a terminal's stderr, else none.
    pub fn progress(&self, p: &std::sync::Arc<crate::progress::Progress>) -> Option<Ticker> {
        if self.json {
            Some(crate::progress::spawn_json_status(p.clone()))
        } else if !self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Some(crate::progress::spawn_ticker(p.clone()))
        } else {
            None
        }
    }

    /// A warning on stderr: `PROG: warning: …`, or with `--json` one line
    /// `{"message_type":"warning","message":…}` (stderr stays machine-readable too).
    pub fn warn(&self, prog: &str, message: &str) {
        if self.json {
            eprintln!(
                "{}",
                json_line("warning", serde_json::json!({ "message": message }))
            );
        } else {
            eprintln!("{prog}: warning: {message}");
        }
    }

    /// Prints a result: JSON when asked, else the human text unless quiet.
    pub fn result(&self, json: &serde_json::Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(json).expect("json"));
        } else if !self.quiet {
            println!("{}", human());
        }
    }
}

/// Runs a binary's async main on a multi-threaded runtime and maps its error to an exit code.
pub fn run_main<F, E>(prog: &str, fut: F) -> ExitCode
where
    F: std::future::Future<Output = Result<ExitCode, E>>,
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(fut) {
        Ok(code) => code,
        Err(e) => report_error(prog, e.as_ref()),
    }
}

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name. Dropping the work future
/// it races (in a `select!`) is what stops producers and removes scratch resources.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `completions SHELL` and `man`: the same two commands on every binary.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocCmd {
    /// Print a shell completion script: `lifeboat-backup completions bash >
    /// /etc/bash_completion.d/lifeboat-backup` (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `lifeboat-backup man > /usr/local/share/man/man1/lifeboat-backup.1`.
    Man,
}

impl DocCmd {
    /// Writes what was asked for to standard output.
    pub fn print(&self, mut cmd: clap::Command) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match self {
            DocCmd::Completions { shell } => {
                let name = cmd.get_name().to_string();
                clap_complete::generate(*shell, &mut cmd, name, &mut out);
                Ok(())
            }
            DocCmd::Man => clap_mangen::Man::new(cmd).render(&mut out),
        }
    }
}

/// `value` (an object) as one JSON line with `message_type` set.
pub fn json_line(message_type: &str, mut value: serde_json::Value) -> String {
    if let Some(o) = value.as_object_mut() {
        o.insert("message_type".into(), message_type.into());
    }
    serde_json::to_string(&value).expect("json")
}

/// Prints `prog: error: ...` (with the cause chain) and a `hint:`, and returns the exit code.
/// With `--json`: one line `{"message_type":"exit_error","code":…,"message":…,"hint":…}`.
pub fn report_error(prog: &str, e: &(dyn std::error::Error + 'static)) -> ExitCode {
    let (msg, hint) = error_text(e);
    if JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed) {
        let v = serde_json::json!({"code": exit_code_for(e), "message": msg, "hint": hint});
        eprintln!("{}", json_line("exit_error", v));
        return ExitCode::from(exit_code_for(e));
    }
    eprintln!("{prog}: error: {msg}");
    if let Some(h) = hint {
        eprintln!("hint: {h}");
    }
    ExitCode::from(exit_code_for(e))
}

/// An error's message with its cause chain (each cause once), and the hint of the first
/// library error in it.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> (String, Option<String>) {
    let mut core = None;
    let mut cur = Some(e);
    while let Some(c) = cur {
        core = core.or_else(|| c.downcast_ref::<crate::Error>());
        cur = c.source();
    }
    (crate::error::chain(e), core.and_then(|c| c.hint()))
}

/// How an action that ended with `e` reads to its hooks and monitors: the error with its
/// hint, and its exit code.
pub fn failed_ending(e: &(dyn std::error::Error + 'static)) -> crate::supervise::Ending {
    let (msg, hint) = error_text(e);
    let text = match hint {
        Some(h) => format!("{msg}\nhint: {h}"),
        None => msg,
    };
    crate::supervise::Ending {
        exit_code: exit_code_for(e),
        log: format!("error: {text}"),
        error: Some(text),
        ..Default::default()
    }
}

/// The documented exit code for an error: that of the first library error in its chain.
pub fn exit_code_for(e: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(core) = c.downcast_ref::<crate::Error>() {
            return core.exit_code() as u8;
        }
        cur = c.source();
    }
    1
}

/// Prints what hooks did: each hook's result line and its output, indented; output of hooks
/// that succeeded only when not quiet (failures always: they explain the exit code).
pub fn print_hooks(reports: &[crate::hooks::HookReport], out: &Output) {
    for r in reports {
        if r.ok() && out.quiet {
            continue;
        }
        eprintln!(
            "{} in {}",
            r.describe(),
            crate::progress::human_duration(r.seconds)
        );
        for line in r.output.lines() {
            eprintln!("  | {line}");
        }
    }
}

/// Prints a snapshot listing, the same in every binary: a table (or JSON), and each damaged
/// snapshot on stderr as well (listed, not fatal: the others are what the operator needs now).
pub fn print_snapshots(listing: &crate::repository::SnapshotListing, location: &str, out: &Output) {
    use crate::progress::{human_bytes, human_duration};
    let now = chrono::Utc::now();
    for d in &listing.damaged {
        eprintln!("damaged: {d}");
    }
    if out.json {
        let rows = listing.to_json(now);
        println!("{}", serde_json::to_string_pretty(&rows).expect("json"));
        return;
    }
    if listing.snapshots.is_empty() && listing.damaged.is_empty() {
        if !out.quiet {
            println!("no snapshots in {location}");
        }
        return;
    }
    println!(
        "{:<10} {:<20} {:>8} {:<16} {:>10}  ITEMS",
        "ID", "TIME (UTC)", "AGE", "HOST", "SIZE"
    );
    for s in &listing.snapshots {
        println!(
            "{:<10} {:<20} {:>8} {:<16} {:>10}  {}",
            s.id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S"),
            human_duration((now - s.time).num_seconds() as f64),
            s.host,
            human_bytes(s.size()),
            s.source_set().join(",")
        );
    }
    for d in &listing.damaged {
        let stored = d.stored.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        println!(
            "{:<10} {:<20} {:>8} {:<16} {:>10}  DAMAGED: {}",
            d.id.short(),
            stored.as_deref().unwrap_or("?"),
            "?",
            "?",
            "?",
            d.reason
        );
    }
}

/// Options of `cmd` and its subcommands that have no help text (`sub sub --flag`), for each
/// binary's test that every option explains itself in `--help`.
pub fn options_without_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let is_option = a.get_long().is_some() || a.get_short().is_some();
            let generated = matches!(a.get_id().as_str(), "help" | "version");
            if is_option && !generated && a.get_help().is_none() {
                out.push(format!("{path} --{}", a.get_long().unwrap_or_default()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = Vec::new();
    walk(cmd, cmd.get_name(), &mut out);
    out
}
