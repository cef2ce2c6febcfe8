//! Command hooks around a run: before, after, on failure and finally, each with a timeout, its
//! output captured and the run's outcome in its environment.
//!
//! The order for `run` (borgmatic's and rustic's, with per-source scope):
//! run `before`, each source's `before`, the backup, then each source's `after` or
//! `on_failure` and `finally`, then the run's `after` or `on_failure` and `finally`. A failing
//! `before` hook fails the run before anything is read (no snapshot); a failing `after` hook is
//! reported and fails the exit code, but the snapshot stays; `on_failure` and `finally` hooks
//! that fail are warnings. A hook that outlives its timeout is killed with its children.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::{Error, Result};

/// Default time a hook command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// What is kept of a hook's output (its end: where the error usually is).
const OUTPUT_TAIL: usize = 16 << 10;

/// `[hooks]` or `[sources.NAME.hooks]`: shell commands (`sh -c`) for each phase.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    #[serde(default)]
    pub before: Vec<String>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub on_failure: Vec<String>,
    #[serde(default)]
    pub finally: Vec<String>,
    /// Per command, e.g. "30s", "5m" (default 5m).
    pub timeout: Option<String>,
}

impl HooksConfig {
    /// The timeout, checked (a config error names the value).
    pub fn timeout(&self) -> Result<Duration> {
        match &self.timeout {
            None => Ok(DEFAULT_TIMEOUT),
            Some(t) => crate::retention::parse_timeout(t, "hook timeout"),
        }
    }

    fn commands(&self, phase: Phase) -> &[String] {
        match phase {
            Phase::Before => &self.before,
            Phase::After => &self.after,
            Phase::OnFailure => &self.on_failure,
            Phase::Finally => &self.finally,
        }
    }

    pub fn is_empty(&self) -> bool {
        [
            Phase::Before,
            Phase::After,
            Phase::OnFailure,
            Phase::Finally,
        ]
        .iter()
        .all(|p| self.commands(*p).is_empty())
    }
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    After,
    OnFailure,
    Finally,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Before => "before",
            Phase::After => "after",
            Phase::OnFailure => "on_failure",
            Phase::Finally => "finally",
        })
    }
}

/// What a hook is told, as `LIFEBOAT_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct HookContext {
    /// `run`, `prune`, `check`…
    pub action: String,
    /// The source, for a source's hooks.
    pub source: Option<String>,
    /// `success` or `failure`, once known.
    pub outcome: Option<String>,
    pub snapshot: Option<String>,
    pub error: Option<String>,
    pub exit_code: Option<u8>,
    pub repository: Option<String>,
}

impl HookContext {
    fn env(&self, phase: Phase) -> BTreeMap<&'static str, String> {
        let mut env = BTreeMap::from([
            ("LIFEBOAT_HOOK", phase.to_string()),
            ("LIFEBOAT_ACTION", self.action.clone()),
        ]);
        let mut put = |k, v: &Option<String>| {
            if let Some(v) = v {
                env.insert(k, v.clone());
            }
        };
        put("LIFEBOAT_SOURCE", &self.source);
        put("LIFEBOAT_OUTCOME", &self.outcome);
        put("LIFEBOAT_SNAPSHOT", &self.snapshot);
        put("LIFEBOAT_ERROR", &self.error);
        put("LIFEBOAT_REPOSITORY", &self.repository);
        put("LIFEBOAT_EXIT_CODE", &self.exit_code.map(|c| c.to_string()));
        env
    }
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "detail")]
pub enum HookStatus {
    Ok,
    /// Exit code, or the signal that ended it.
    Failed(String),
    /// Killed at its timeout.
    TimedOut(String),
    /// `sh` could not be started.
    NotStarted(String),
}

/// One hook command's result.
#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub command: String,
    #[serde(flatten)]
    pub status: HookStatus,
    /// Standard output and error, interleaved as written; the end of it if long.
    pub output: String,
    pub seconds: f64,
}

impl HookReport {
    pub fn ok(&self) -> bool {
        self.status == HookStatus::Ok
    }

    /// One line for a log or an error: which hook, how it ended.
    pub fn describe(&self) -> String {
        let scope = match &self.source {
            Some(s) => format!("source {s} "),
            None => String::new(),
        };
        let how = match &self.status {
            HookStatus::Ok => "succeeded".to_string(),
            HookStatus::Failed(s) => format!("failed ({s})"),
            HookStatus::TimedOut(t) => format!("was killed after {t}"),
            HookStatus::NotStarted(e) => format!("could not start: {e}"),
        };
        format!("{scope}{} hook `{}` {how}", self.phase, self.command)
    }
}

/// Runs the commands of `phase` one after another. In `before`, the first failure stops the
/// rest (they prepare what follows); other phases run every command.
pub async fn run(hooks: &HooksConfig, phase: Phase, ctx: &HookContext) -> Result<Vec<HookReport>> {
    let timeout = hooks.timeout()?;
    let mut reports = Vec::new();
    for cmd in hooks.commands(phase) {
        let r = run_one(cmd, phase, ctx, timeout).await;
        let stop = phase == Phase::Before && !r.ok();
        reports.push(r);
        if stop {
            break;
        }
    }
    Ok(reports)
}

async fn run_one(cmd: &str, phase: Phase, ctx: &HookContext, timeout: Duration) -> HookReport {
    let t0 = Instant::now();
    let report = |status, output| HookReport {
        phase,
        source: ctx.source.clone(),
        command: cmd.to_string(),
        status,
        output,
        seconds: t0.elapsed().as_secs_f64(),
    };
    // One pipe for both streams keeps the output in the order it was written.
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return report(HookStatus::NotStarted(e.to_string()), String::new()),
    };
    let stderr = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return report(HookStatus::NotStarted(e.to_string()), String::new()),
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .envs(ctx.env(phase))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        // Its own process group: a timeout kills what the shell started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return report(HookStatus::NotStarted(e.to_string()), String::new()),
    };
    // Our copies of the pipe's write end went into `command`; drop it so EOF can come.
    drop(command);
    let output = read_tail(reader);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => HookStatus::Ok,
        Ok(Ok(st)) => HookStatus::Failed(st.to_string()),
        Ok(Err(e)) => HookStatus::Failed(e.to_string()),
        Err(_) => {
            kill_group(&child);
            let _ = child.kill().await;
            HookStatus::TimedOut(crate::progress::human_duration(timeout.as_secs_f64()))
        }
    };
    // A background process the hook left may hold the pipe open: wait for its output briefly.
    let output = match tokio::time::timeout(Duration::from_secs(1), output).await {
        Ok(Ok(text)) => text,
        _ => String::new(),
    };
    report(status, output)
}

fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Reads the pipe to its end on a thread of its own, keeping the last [`OUTPUT_TAIL`] bytes.
/// Not a runtime thread: a daemon the hook started may hold the pipe open for ever, and the
/// process must still be able to exit.
fn read_tail(mut reader: std::io::PipeReader) -> tokio::sync::oneshot::Receiver<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut piece = vec![0u8; 8192];
        while let Ok(n) = reader.read(&mut piece) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&piece[..n]);
            if buf.len() > 2 * OUTPUT_TAIL {
                buf.drain(..buf.len() - OUTPUT_TAIL);
            }
        }
        if buf.len() > OUTPUT_TAIL {
            buf.drain(..buf.len() - OUTPUT_TAIL);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// The hooks of one run: its own and those of the sources it backs up, with what they did.
#[derive(Debug, Default)]
pub struct RunHooks {
    run: HooksConfig,
    sources: Vec<(String, HooksConfig)>,
    /// Sources whose `before` hooks began: their closing phases are due (a source whose
    /// `before` failed half-way may have stopped something its `finally` starts again).
    started: usize,
    reports: Vec<HookReport>,
}

impl RunHooks {
    /// `[hooks]` and the `[sources.NAME.hooks]` of the sources named.
    pub fn new(run: HooksConfig, sources: Vec<(String, HooksConfig)>) -> RunHooks {
        RunHooks {
            run,
            sources,
            ..Default::default()
        }
    }

    /// The run's `before` hooks, then each source's; stops at the first failure, which fails
    /// the run before anything is read.
    pub async fn before(&mut self, ctx: &HookContext) -> Result<()> {
        let r = run(&self.run, Phase::Before, ctx).await?;
        self.check(r, "the run was not started")?;
        for (name, hooks) in self.sources.clone() {
            self.started += 1;
            let ctx = HookContext {
                source: Some(name),
                ..ctx.clone()
            };
            let r = run(&hooks, Phase::Before, &ctx).await?;
            self.check(r, "the run was not started")?;
        }
        Ok(())
    }

    /// After the run: each started source's `after` (or `on_failure`) and `finally`, then the
    /// run's. `ctx.outcome` says which. A failed `after` hook is an error (the snapshot
    /// stays); failed `on_failure` and `finally` hooks are only reported.
    pub async fn end(&mut self, ctx: &HookContext) -> Result<()> {
        let ok = ctx.outcome.as_deref() == Some("success");
        let closing = if ok { Phase::After } else { Phase::OnFailure };
        let mut first_failure = None;
        let mut scopes: Vec<(Option<String>, HooksConfig)> = Vec::new();
        scopes.extend(
            self.sources[..self.started]
                .iter()
                .map(|(n, h)| (Some(n.clone()), h.clone())),
        );
        scopes.push((None, self.run.clone()));
        for (source, hooks) in scopes {
            let ctx = HookContext {
                source,
                ..ctx.clone()
            };
            for phase in [closing, Phase::Finally] {
                let r = run(&hooks, phase, &ctx).await?;
                if phase == Phase::After
                    && first_failure.is_none()
                    && let Some(bad) = r.iter().find(|r| !r.ok())
                {
                    first_failure = Some(bad.describe());
                }
                self.reports.extend(r);
            }
        }
        match first_failure {
            Some(what) => Err(Error::Hook {
                what: format!("{what}; the snapshot was kept"),
            }),
            None => Ok(()),
        }
    }

    /// Reports of the hooks run since the last call, for the log.
    pub fn drain(&mut self) -> Vec<HookReport> {
        std::mem::take(&mut self.reports)
    }

    fn check(&mut self, reports: Vec<HookReport>, then: &str) -> Result<()> {
        let bad = reports.iter().find(|r| !r.ok()).map(|r| r.describe());
        self.reports.extend(reports);
        match bad {
            Some(what) => Err(Error::Hook {
                what: format!("{what}; {then}"),
            }),
            None => Ok(()),
        }
    }
}
