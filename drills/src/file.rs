//! The drill file: which repository and snapshot, budgets, scratch targets, custom checks.

use std::path::{Path, PathBuf};

use backup_core::config::RepositoryConfig;
use backup_core::error::{Error, Result};
use backup_core::hooks::HooksConfig;
use backup_core::notify::MonitorConfig;
use serde::Deserialize;

/// A drill file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillFile {
    /// The repository, as in a backup config's `[repository]`…
    pub repository: Option<RepositoryConfig>,
    /// …or the backup config it belongs to.
    pub config: Option<PathBuf>,
    /// `latest` (default), a snapshot id (prefix).
    #[serde(default = "latest")]
    pub snapshot: String,
    /// With `snapshot = "latest"`: the newest snapshot holding all these items…
    #[serde(default)]
    pub items: Vec<String>,
    /// …made by this host (default: `[backup] host` of `config`, else this machine; `"*"`
    /// for any host: a drill machine drilling the production host's backups names it here)…
    pub host: Option<String>,
    /// …with all these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub budgets: Budgets,
    #[serde(default)]
    pub targets: Targets,
    #[serde(default)]
    pub checks: Checks,
    /// Point-in-time restores of base backup items, each into a scratch cluster.
    #[serde(default)]
    pub pitr: Vec<PitrDrill>,
    #[serde(default)]
    pub reports: Reports,
    /// `[hooks]`: commands before, after, on failure and finally of the drill (as a backup
    /// config's; `LIFEBOAT_ACTION=drill`).
    #[serde(default)]
    pub hooks: HooksConfig,
    /// `[monitor]`: pings, webhooks and notifier commands for the drill (a drill usually has a
    /// check of its own, apart from the nightly run's).
    #[serde(default)]
    pub monitor: MonitorConfig,
}

/// `[[pitr]]`: restore a base backup item to a point in time into a scratch cluster the drill
/// starts, replaying the WAL archive, and prove where recovery landed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PitrDrill {
    /// The base backup item (a `postgres_base` source or `--pg-base`).
    pub item: String,
    /// `latest` (default), `immediate`, or a time (RFC 3339). With `marker_url`, the moment
    /// between the two markers is the target.
    pub target: Option<String>,
    /// `latest` (default), `current` or a timeline number.
    pub timeline: Option<String>,
    /// The live primary (libpq URL; a role that may create a table and run pg_switch_wal):
    /// the drill commits a marker row, notes the time, commits a second one, switches WAL and
    /// waits for the archive to have it; the restore to that time must hold the first marker
    /// and not the second.
    pub marker_url: Option<String>,
    /// The markers' table in `marker_url`'s database (created if missing).
    #[serde(default = "marker_table")]
    pub marker_table: String,
    /// How long the markers' WAL may take to reach the archive (default 5m).
    pub marker_timeout: Option<String>,
    /// RPO budget: the newest archived WAL may be at most this old when the drill starts.
    pub max_rpo: Option<String>,
    /// RTO budget: unpacking the base backup plus replaying the WAL to the target.
    pub max_rto: Option<String>,
}

fn marker_table() -> String {
    "lifeboat_drill_marker".into()
}

fn latest() -> String {
    "latest".into()
}

/// RPO and RTO budgets (`26h`, `15m`…).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// RPO: the snapshot may be at most this old.
    pub max_snapshot_age: Option<String>,
    /// RTO: restoring and checking everything may take at most this long.
    pub max_restore_time: Option<String>,
}

/// Where each item kind is restored: `"ephemeral"` (a scratch server or temp dir the drill
/// starts and removes) or an existing scratch URL / directory. Redis is always ephemeral: an
/// RDB is loaded by starting a server on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default = "ephemeral")]
    pub postgres: String,
    #[serde(default = "ephemeral")]
    pub redis: String,
    #[serde(default = "ephemeral")]
    pub directory: String,
}

fn ephemeral() -> String {
    "ephemeral".into()
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            postgres: ephemeral(),
            redis: ephemeral(),
            directory: ephemeral(),
        }
    }
}

/// Custom checks, in addition to the built-in ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    #[serde(default)]
    pub sql: Vec<SqlCheck>,
    #[serde(default)]
    pub redis: Vec<RedisCheck>,
    #[serde(default)]
    pub shell: Vec<ShellCheck>,
}

/// `select …` against a restored PostgreSQL item; the first column of the first row is
/// compared with `expect` (`> 0`, `>= 10`, `= 3`, `!= 0`, `< 5`, or an exact text).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlCheck {
    pub item: String,
    /// The database to ask (default: the item's; `postgres` for a `[[pitr]]` cluster).
    pub database: Option<String>,
    pub sql: String,
    pub expect: String,
    pub name: Option<String>,
}

/// A Redis command against a restored Redis item (`["DBSIZE"]`, `["EXISTS", "k"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisCheck {
    pub item: String,
    pub command: Vec<String>,
    pub expect: String,
    #[serde(default)]
    pub db: u32,
    pub name: Option<String>,
}

/// A shell command that must exit 0. It sees `LIFEBOAT_DRILL_DIR` (restored files and
/// volumes), `LIFEBOAT_PG_URL` and `LIFEBOAT_REDIS_URL` (scratch servers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellCheck {
    pub command: String,
    pub name: Option<String>,
}

/// Report paths (any may be omitted).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reports {
    pub json: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub prometheus: Option<PathBuf>,
    /// A Prometheus Pushgateway (`http://host:9091`): the same metrics, pushed under job
    /// `lifeboat_drill`.
    pub pushgateway: Option<String>,
}

impl DrillFile {
    /// The repository's URL as hooks, monitors and metrics name it (the config file's path
    /// when that config cannot be read: the drill itself will say why).
    pub fn repository_url(&self) -> String {
        match (&self.config, &self.repository) {
            (Some(path), _) => backup_core::config::ConfigFile::load(path)
                .map(|c| c.repository.url)
                .unwrap_or_else(|_| path.display().to_string()),
            (None, Some(r)) => r.url.clone(),
            (None, None) => String::new(),
        }
    }

    /// Reads a drill file.
    pub fn load(path: &Path) -> Result<DrillFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })
    }
}

/// Compares `got` with an expectation: `> 0`, `>= 10`, `< 5`, `<= 5`, `= 3`, `== 3`, `!= 0`,
/// or, when the expectation is not an operator and a number, exact text.
pub fn expect_holds(expect: &str, got: &str) -> bool {
    let e = expect.trim();
    let got = got.trim();
    for op in [">=", "<=", "!=", "==", ">", "<", "="] {
        if let Some(rhs) = e.strip_prefix(op) {
            let rhs = rhs.trim();
            if let (Ok(a), Ok(b)) = (got.parse::<f64>(), rhs.parse::<f64>()) {
                return match op {
                    ">=" => a >= b,
                    "<=" => a <= b,
                    "!=" => a != b,
                    "==" | "=" => a == b,
                    ">" => a > b,
                    _ => a < b,
                };
            }
            return match op {
                "!=" => got != rhs,
                "==" | "=" => got == rhs,
                _ => false,
            };
        }
    }
    got == e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_drill_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let f =
                DrillFile::load(&e.path()).unwrap_or_else(|err| panic!("{:?}: {err}", e.path()));
            assert_eq!(f.snapshot, "latest");
            crate::pitr::validate(&f.pitr).unwrap();
            n += 1;
        }
        assert!(n >= 2);
    }

    #[test]
    fn expectations() {
        let cases = [
            ("> 0", "5", true),
            ("> 0", "0", false),
            (">= 10", "10", true),
            ("< 5", "4.5", true),
            ("= 3", "3", true),
            ("== 3", "4", false),
            ("!= 0", "0", false),
            ("= ok", "ok", true),
            ("blue", "blue", true),
            ("blue", "green", false),
            ("> 0", "not a number", false),
        ];
        for (e, g, want) in cases {
            assert_eq!(expect_holds(e, g), want, "{e} vs {g}");
        }
    }

    #[test]
    fn example_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            DrillFile::load(&e.path())
                .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            n += 1;
        }
        assert!(n >= 2);
    }
}
