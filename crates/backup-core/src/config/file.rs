//! The configuration file's schema: `[repository]`, `[backup]`, loading with `${VAR}`
//! expansion and unknown keys refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RetentionConfig, SourceConfig};
use crate::anomaly::AnomalyRules;
use crate::error::{Error, Result};
use crate::hooks::HooksConfig;
use crate::notify::MonitorConfig;

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Applied by `run` after a fully successful backup, and by `forget`/`prune`.
    pub retention: Option<RetentionConfig>,
    /// `[metrics]`: where `run` writes its Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[monitor]`: pings, webhooks and notifier commands for every `run`.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// `[hooks]`: commands around every `run`.
    #[serde(default)]
    pub hooks: HooksConfig,
    /// `[hooks.prune]`, `[hooks.check]`: commands around those actions, by action name.
    #[serde(skip)]
    pub action_hooks: BTreeMap<String, HooksConfig>,
    /// `[sources.NAME.hooks]`, taken out of each source's table before it is parsed (a source's
    /// type decides its other keys).
    #[serde(skip)]
    pub source_hooks: BTreeMap<String, HooksConfig>,
    /// `on_anomaly`, `min_files`, `min_bytes` of each `[sources.NAME]`, taken out the same way.
    #[serde(skip)]
    pub source_anomaly: BTreeMap<String, AnomalyRules>,
}

/// `[repository]`: where, and how to unlock it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A directory path (`s3://bucket/prefix` comes with the S3 store).
    pub url: String,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the passphrase.
    pub password_env: Option<String>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Settings for `s3://` repositories.
    #[serde(default)]
    pub s3: S3Config,
}

/// `[repository.s3]`: the standard AWS environment works too (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, instance roles).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub access_key_id: Option<String>,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Attempts per request, retries included (default 8).
    pub max_attempts: Option<u32>,
    /// Per attempt, to establish a connection (default "10s").
    pub connect_timeout: Option<String>,
    /// Per attempt, to wait for an answer (default "30s").
    pub read_timeout: Option<String>,
    /// One request with all its retries (default "3m"): the most a hung endpoint costs.
    pub operation_timeout: Option<String>,
    /// Sign uploaded bodies with SigV4 (default false: objects are sealed with AES-GCM, and
    /// signing costs a SHA-256 pass over every byte uploaded).
    pub sign_payload: Option<bool>,
    /// `{ mode = "governance" | "compliance", days = N }`.
    pub object_lock: Option<ObjectLockConfig>,
}

/// Object Lock settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: String,
    pub days: u32,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A textfile for node_exporter's textfile collector, replaced whole after every run;
    /// `prune` and `check` write theirs beside it (`NAME-prune.prom`, `NAME-check.prom`).
    pub textfile: Option<PathBuf>,
    /// A Prometheus Pushgateway (`http://host:9091`): every run, prune and check pushes its
    /// metrics under job `lifeboat_backup`, `lifeboat_prune`, `lifeboat_check`.
    pub pushgateway: Option<String>,
}

impl MetricsConfig {
    /// The textfile of `action`: `textfile` itself for `run`, a sibling named after the
    /// action for the others (one file per action: each replaces its file whole).
    pub fn textfile_for(&self, action: crate::supervise::Action) -> Option<PathBuf> {
        let file = self.textfile.as_ref()?;
        if action == crate::supervise::Action::Run {
            return Some(file.clone());
        }
        let stem = file.file_stem().unwrap_or_default().to_string_lossy();
        let name = match file.extension() {
            Some(ext) => format!("{stem}-{action}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{action}"),
        };
        Some(file.with_file_name(name))
    }
}

/// `[backup]`: run settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub host: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub compression_level: Option<i32>,
    pub concurrency: Option<usize>,
    /// Commit the healthy sources when some fail (an incomplete snapshot, exit code 8).
    pub partial: Option<bool>,
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let err = |detail: String| Error::Config {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut value: toml::Value = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        // Hooks are shell commands: `${VAR}` in them is the shell's, expanded when they run
        // (with LIFEBOAT_SNAPSHOT and the rest set), so they are taken out before expansion.
        let (run_hooks, action_hooks, source_hooks) = take_hooks(&mut value).map_err(err)?;
        let source_anomaly = take_anomaly_rules(&mut value).map_err(err)?;
        expand_env(&mut value).map_err(err)?;
        let mut cfg: ConfigFile = value
            .try_into()
            .map_err(|e: toml::de::Error| err(with_line(&e.to_string(), &text)))?;
        cfg.hooks = run_hooks;
        cfg.action_hooks = action_hooks;
        cfg.source_hooks = source_hooks;
        cfg.source_anomaly = source_anomaly;
        cfg.monitor.timeout().map_err(|e| err(e.to_string()))?;
        let scoped = cfg
            .action_hooks
            .iter()
            .map(|(a, h)| (format!("[hooks.{a}]"), h))
            .chain(
                cfg.source_hooks
                    .iter()
                    .map(|(n, h)| (format!("[sources.{n}.hooks]"), h)),
            );
        for (scope, hooks) in std::iter::once(("[hooks]".to_string(), &cfg.hooks)).chain(scoped) {
            hooks.timeout().map_err(|e| err(format!("{scope}: {e}")))?;
        }
        for name in cfg.sources.keys() {
            if !crate::manifest::validate_item_name(name) {
                return Err(err(format!(
                    "source name {name:?} is not allowed: use letters, digits, '.', '_' and '-'"
                )));
            }
        }
        Ok(cfg)
    }
}

/// The parsed value has no positions; an unknown key is found again in the text, so the
/// message says on which line (the first line that sets a key of that name).
fn with_line(msg: &str, text: &str) -> String {
    let key = msg
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k);
    let line = key.and_then(|k| {
        text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(k)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    });
    match line {
        Some(n) => format!("line {}: {msg}", n + 1),
        None => msg.to_string(),
    }
}

/// Removes and parses `[hooks]` (with `[hooks.prune]` and `[hooks.check]`) and the `hooks`
/// of every `[sources.NAME]` table.
type Hooks = (
    HooksConfig,
    BTreeMap<String, HooksConfig>,
    BTreeMap<String, HooksConfig>,
);
fn take_hooks(v: &mut toml::Value) -> std::result::Result<Hooks, String> {
    let parse = |h: toml::Value, scope: &str| {
        h.try_into::<HooksConfig>()
            .map_err(|e| format!("{scope}: {e}"))
    };
    let mut actions = BTreeMap::new();
    let run = match v.as_table_mut().and_then(|t| t.remove("hooks")) {
        Some(mut h) => {
            for action in ["prune", "check"] {
                if let Some(a) = h.as_table_mut().and_then(|t| t.remove(action)) {
                    actions.insert(action.to_string(), parse(a, &format!("[hooks.{action}]"))?);
                }
            }
            parse(h, "[hooks]")?
        }
        None => HooksConfig::default(),
    };
    let mut sources = BTreeMap::new();
    if let Some(table) = v.get_mut("sources").and_then(|s| s.as_table_mut()) {
        for (name, source) in table.iter_mut() {
            if let Some(h) = source.as_table_mut().and_then(|t| t.remove("hooks")) {
                sources.insert(name.clone(), parse(h, &format!("[sources.{name}.hooks]"))?);
            }
        }
    }
    Ok((run, actions, sources))
}

/// Removes and parses the anomaly keys of every `[sources.NAME]` table (they apply to every
/// source type, whose other keys the type decides).
fn take_anomaly_rules(
    v: &mut toml::Value,
) -> std::result::Result<BTreeMap<String, AnomalyRules>, String> {
    let mut out = BTreeMap::new();
    let Some(table) = v.get_mut("sources").and_then(|s| s.as_table_mut()) else {
        return Ok(out);
    };
    for (name, source) in table.iter_mut() {
        let Some(t) = source.as_table_mut() else {
            continue;
        };
        let mut rules = toml::Table::new();
        for key in ["on_anomaly", "min_files", "min_bytes"] {
            if let Some(x) = t.remove(key) {
                rules.insert(key.into(), x);
            }
        }
        if !rules.is_empty() {
            let r = toml::Value::Table(rules)
                .try_into::<AnomalyRules>()
                .map_err(|e| format!("[sources.{name}]: {e}"))?;
            out.insert(name.clone(), r);
        }
    }
    Ok(out)
}

fn expand_env(v: &mut toml::Value) -> std::result::Result<(), String> {
    match v {
        toml::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let end = rest[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?
                    + i;
                let var = &rest[i + 2..end];
                out.push_str(
                    &std::env::var(var)
                        .map_err(|_| format!("environment variable {var} is not set"))?,
                );
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(a) => a.iter_mut().try_for_each(expand_env)?,
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, v)| expand_env(v))?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_env_expansion_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        // SAFETY-free: tests in this crate do not read LIFEBOAT_TEST_DIR concurrently.
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        std::fs::write(
            &p,
            "[repository]\nurl = \"${HOME}/repo\"\npassword_file = \"/etc/pw\"\n\n[sources.web]\ntype = \"volume\"\npath = \"/srv\"\nexclude = [\"*.tmp\"]\n\n[sources.db]\ntype = \"command\"\ncommand = \"echo hi\"\nrestore_command = \"cat\"\n",
        )
        .unwrap();
        let c = ConfigFile::load(&p).unwrap();
        assert_eq!(c.repository.url, format!("{home}/repo"));
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources["db"].restore_command(), Some("cat"));
        std::fs::write(&p, "[repository]\nurl = \"x\"\npasword_file = \"typo\"\n").unwrap();
        let e = ConfigFile::load(&p).unwrap_err();
        assert!(e.to_string().contains("pasword_file"), "{e}");
        std::fs::write(&p, "[repository]\nurl = \"${LIFEBOAT_SURELY_UNSET_VAR}\"\n").unwrap();
        assert!(
            ConfigFile::load(&p)
                .unwrap_err()
                .to_string()
                .contains("LIFEBOAT_SURELY_UNSET_VAR")
        );
    }
}
