//! `config validate`: everything a nightly run needs, checked in one go, every problem named
//! (a run stops at the first one).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{ConfigFile, RedisConfig, SourceConfig, open_store};
use crate::engines::postgres::session::PsqlSession;
use crate::engines::redis::resp::{RedisConn, RedisUrl};
use crate::error::Error;

/// One thing checked.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// `repository`, `source app`, `hooks`…
    pub scope: String,
    pub ok: bool,
    pub detail: String,
}

/// What `validate` found.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub findings: Vec<Finding>,
    /// The retention policy in words, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

impl ValidationReport {
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| !f.ok).count()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the files a run reads (secrets, volume paths) and, with `connect`, reaches the
/// repository and every source.
pub async fn validate(cfg: &ConfigFile, connect: bool) -> ValidationReport {
    let mut f = Vec::new();
    let mut note = |scope: &str, r: std::result::Result<String, String>| {
        f.push(match r {
            Ok(detail) => Finding {
                scope: scope.into(),
                ok: true,
                detail,
            },
            Err(detail) => Finding {
                scope: scope.into(),
                ok: false,
                detail,
            },
        })
    };
    let repo = &cfg.repository;
    for (what, path) in [
        ("password_file", repo.password_file.as_deref()),
        ("key_file", repo.key_file.as_deref()),
        (
            "s3.secret_access_key_file",
            repo.s3.secret_access_key_file.as_deref(),
        ),
    ] {
        if let Some(p) = path {
            note("repository", readable(what, p));
        }
    }
    if let Some(var) = &repo.password_env {
        note(
            "repository",
            std::env::var(var)
                .map(|_| format!("password_env {var} is set"))
                .map_err(|_| format!("password_env {var} is not set in this environment")),
        );
    }
    if connect {
        note("repository", reach_repository(cfg).await);
    }
    for (name, source) in &cfg.sources {
        let scope = format!("source {name}");
        for r in check_source(source, connect).await {
            note(&scope, r);
        }
    }
    let retention = cfg.retention.as_ref().map(describe_retention);
    ValidationReport {
        findings: f,
        retention,
    }
}

fn readable(what: &str, p: &Path) -> std::result::Result<String, String> {
    std::fs::File::open(p)
        .map(|_| format!("{what} {} is readable", p.display()))
        .map_err(|e| format!("{what} {} cannot be read: {e}", p.display()))
}

async fn reach_repository(cfg: &ConfigFile) -> std::result::Result<String, String> {
    let url = &cfg.repository.url;
    let store = open_store(url, &cfg.repository.s3)
        .await
        .map_err(|e| with_hint(&e))?;
    match store.head("config").await {
        Ok(_) => Ok(format!("repository {url} is reachable and initialised")),
        Err(Error::NotFound { .. }) => Err(format!(
            "no repository at {url}\nhint: create it with `lifeboat-backup init`"
        )),
        Err(e) => Err(with_hint(&e)),
    }
}

fn with_hint(e: &Error) -> String {
    match e.hint() {
        Some(h) => format!("{e}\nhint: {h}"),
        None => e.to_string(),
    }
}

async fn check_source(
    source: &SourceConfig,
    connect: bool,
) -> Vec<std::result::Result<String, String>> {
    let mut out = Vec::new();
    match source {
        SourceConfig::Volume { path, .. } => out.push(if path.is_dir() {
            Ok(format!("{} is a directory", path.display()))
        } else {
            Err(format!("{} is not a directory", path.display()))
        }),
        SourceConfig::Command { command, .. } => {
            out.push(Ok(format!("runs `{command}` (not run by validate)")))
        }
        SourceConfig::Postgres(pg) => {
            let tools = pg.tools().map_err(|e| e.to_string());
            if let Some(p) = &pg.password_file {
                out.push(readable("password_file", p));
            }
            if let (true, Ok(tools)) = (connect, &tools) {
                let shown = crate::engines::postgres::conninfo::redact(&pg.url);
                out.push(
                    match tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        PsqlSession::connect(tools, &pg.url),
                    )
                    .await
                    {
                        Ok(Ok(s)) => {
                            s.close().await;
                            Ok(format!("PostgreSQL at {shown} answers"))
                        }
                        Ok(Err(e)) => Err(format!("PostgreSQL at {shown}: {e}")),
                        Err(_) => Err(format!("PostgreSQL at {shown}: no answer within 10s")),
                    },
                );
            }
        }
        SourceConfig::PostgresBase(b) => {
            if let Some(p) = &b.password_file {
                out.push(readable("password_file", p));
            }
        }
        SourceConfig::Redis(r) => {
            if let Some(p) = &r.password_file {
                out.push(readable("password_file", p));
            }
            if connect {
                out.push(reach_redis(r).await);
            }
        }
    }
    out
}

async fn reach_redis(r: &RedisConfig) -> std::result::Result<String, String> {
    let mut url = RedisUrl::parse(&r.url)?;
    if url.password.is_none() {
        url.password = r
            .password_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim_end().to_string());
    }
    let shown = url.redacted();
    RedisConn::connect(&url, CONNECT_TIMEOUT)
        .await
        .map(|_| format!("Redis at {shown} answers"))
        .map_err(|e| format!("Redis at {shown}: {e}"))
}

/// The policy in words: what each rule keeps.
fn describe_retention(r: &super::RetentionConfig) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (r.keep_last, "the last {} snapshots"),
        (r.keep_hourly, "one per hour for {} hours"),
        (r.keep_daily, "one per day for {} days"),
        (r.keep_weekly, "one per week for {} weeks"),
        (r.keep_monthly, "one per month for {} months"),
        (r.keep_yearly, "one per year for {} years"),
    ] {
        if let Some(n) = n {
            parts.push(what.replace("{}", &n.to_string()));
        }
    }
    if let Some(w) = &r.keep_within {
        parts.push(format!("everything from the last {w}"));
    }
    if !r.keep_tags.is_empty() {
        parts.push(format!("snapshots tagged {}", r.keep_tags.join(", ")));
    }
    let mut s = format!(
        "keeps {} per host and source set, and every protected snapshot",
        if parts.is_empty() {
            "nothing (a run would refuse to apply it)".to_string()
        } else {
            parts.join(", ")
        }
    );
    if r.prune.unwrap_or(true) {
        s.push_str("; unreferenced data is collected after each run");
    }
    s
}
