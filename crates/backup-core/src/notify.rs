//! Telling someone how a run went: a Healthchecks-style ping (start, success, fail), JSON
//! webhooks and notifier commands. A notification that cannot be sent is a warning, never a
//! failed run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What a notification may carry of the run's output (Healthchecks keeps 10 000 bytes).
const BODY_TAIL: usize = 10_000;
const TEXT: &str = "text/plain; charset=utf-8";

/// `[monitor]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Healthchecks-style: `URL/start` when a run starts, `URL` on success, `URL/fail` on
    /// failure, each a POST whose body is the end of the run's output.
    pub ping_url: Option<String>,
    /// Per request, e.g. "10s" (default 10s).
    pub timeout: Option<String>,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    #[serde(default)]
    pub command: Vec<CommandNotifier>,
}

/// `[[monitor.webhook]]`: the run's summary as JSON, POSTed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose value is read from a file (tokens stay out of the config).
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// `success`, `failure` (default both).
    #[serde(default = "both")]
    pub on: Vec<Outcome>,
}

/// `[[monitor.command]]`: a shell command given the run's summary as JSON on stdin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandNotifier {
    pub command: String,
    #[serde(default = "both")]
    pub on: Vec<Outcome>,
}

fn both() -> Vec<Outcome> {
    vec![Outcome::Success, Outcome::Failure]
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl std::fmt::Display for Outcome {
    /// As hooks see it in `LIFEBOAT_OUTCOME` and monitors in the JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        })
    }
}

/// What a finished run tells its monitors (the webhook's JSON, the command's stdin).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `run`, `prune`, `check`…
    pub action: String,
    pub outcome: Outcome,
    pub exit_code: u8,
    pub repository: String,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Per item: name, kind, size, stored bytes (empty without a snapshot).
    pub items: Vec<serde_json::Value>,
    /// The run's own account of itself: result line, warnings, hooks, error and hint.
    pub log: String,
}

impl MonitorConfig {
    pub fn is_empty(&self) -> bool {
        self.ping_url.is_none() && self.webhook.is_empty() && self.command.is_empty()
    }

    /// The request timeout, checked.
    pub fn timeout(&self) -> Result<Duration> {
        match &self.timeout {
            None => Ok(Duration::from_secs(10)),
            Some(t) => crate::retention::parse_timeout(t, "[monitor] timeout"),
        }
    }

    /// Pings `URL/start`. Returns warnings.
    pub async fn started(&self) -> Vec<String> {
        let Some(url) = &self.ping_url else {
            return Vec::new();
        };
        let url = format!("{}/start", url.trim_end_matches('/'));
        self.post(&url, Vec::new(), TEXT, &BTreeMap::new())
            .await
            .err()
            .into_iter()
            .collect()
    }

    /// Pings, calls the webhooks and runs the commands for a finished run. Returns warnings.
    pub async fn finished(&self, s: &RunSummary) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(url) = &self.ping_url {
            let url = match s.outcome {
                Outcome::Success => url.trim_end_matches('/').to_string(),
                Outcome::Failure => format!("{}/fail", url.trim_end_matches('/')),
            };
            let body = tail(&s.log, BODY_TAIL).into_bytes();
            warnings.extend(self.post(&url, body, TEXT, &BTreeMap::new()).await.err());
        }
        let json = serde_json::to_vec(s).expect("a summary serializes");
        for w in self.webhook.iter().filter(|w| w.on.contains(&s.outcome)) {
            let sent = match w.headers() {
                Ok(h) => {
                    self.post(&w.url, json.clone(), "application/json", &h)
                        .await
                }
                Err(e) => Err(e),
            };
            warnings.extend(sent.err());
        }
        for c in self.command.iter().filter(|c| c.on.contains(&s.outcome)) {
            warnings.extend(self.run_command(&c.command, &json).await.err());
        }
        warnings
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        content_type: &str,
        headers: &BTreeMap<String, String>,
    ) -> std::result::Result<(), String> {
        let timeout = self.timeout().map_err(|e| e.to_string())?;
        let req = Request {
            method: hyper::Method::POST,
            url,
            body,
            content_type,
            headers,
        };
        send(req, timeout)
            .await
            .map_err(|why| format!("notifying {} failed: {why}", redact(url)))
    }

    async fn run_command(&self, cmd: &str, json: &[u8]) -> std::result::Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let timeout = self.timeout().map_err(|e| e.to_string())?;
        let fail = |why: String| format!("notifier `{cmd}` failed: {why}");
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let run = async {
            // A command that does not read its input is fine: it may only want to be called.
            let _ = stdin.write_all(json).await;
            drop(stdin);
            child.wait().await
        };
        match tokio::time::timeout(timeout, run).await {
            Err(_) => Err(fail("timed out".into())),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Ok(Ok(st)) if st.success() => Ok(()),
            Ok(Ok(st)) => Err(fail(st.to_string())),
        }
    }
}

impl WebhookConfig {
    fn headers(&self) -> std::result::Result<BTreeMap<String, String>, String> {
        let mut h = self.headers.clone();
        for (k, path) in &self.header_files {
            let v = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "webhook {}: header {k} from {}: {e}",
                    redact(&self.url),
                    path.display()
                )
            })?;
            h.insert(k.clone(), v.trim_end().to_string());
        }
        Ok(h)
    }
}

/// One HTTP request to a monitor or a Pushgateway.
pub(crate) struct Request<'a> {
    pub method: hyper::Method,
    pub url: &'a str,
    pub body: Vec<u8>,
    pub content_type: &'a str,
    pub headers: &'a BTreeMap<String, String>,
}

/// Sends `req`; an error says why, without the URL (the caller names what it was sending to).
pub(crate) async fn send(req: Request<'_>, timeout: Duration) -> std::result::Result<(), String> {
    let mut r = hyper::Request::builder()
        .method(req.method)
        .uri(req.url)
        .header(
            "user-agent",
            concat!("lifeboat/", env!("CARGO_PKG_VERSION")),
        )
        .header("content-type", req.content_type);
    for (k, v) in req.headers {
        r = r.header(k.as_str(), v.as_str());
    }
    let r = r
        .body(Full::new(Bytes::from(req.body)))
        .map_err(|e| e.to_string())?;
    let client = client()?;
    match tokio::time::timeout(timeout, client.request(r)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            crate::progress::human_duration(timeout.as_secs_f64())
        )),
        Ok(Err(e)) => Err(crate::error::chain(&e)),
        Ok(Ok(r)) if r.status().is_success() => Ok(()),
        Ok(Ok(r)) => {
            // Pushgateway and most webhooks say in the body what they did not like.
            let status = r.status();
            let body =
                tokio::time::timeout(timeout, http_body_util::BodyExt::collect(r.into_body()))
                    .await
                    .ok()
                    .and_then(|b| b.ok())
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                    .unwrap_or_default();
            Err(match body.is_empty() {
                true => format!("HTTP {status}"),
                false => format!("HTTP {status}: {}", tail(&body, 300)),
            })
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// One client per request: notifications are a handful per run, and a fresh connection
/// never inherits a pool's broken one.
fn client() -> std::result::Result<HttpClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("no TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// The URL without a path: Healthchecks and chat webhooks carry their secret in it.
pub(crate) fn redact(url: &str) -> String {
    match url.find("://").map(|i| i + 3) {
        Some(i) => match url[i..].find('/') {
            Some(j) => format!("{}/…", &url[..i + j]),
            None => url.to_string(),
        },
        None => "(a URL)".to_string(),
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_urls_are_not_shown() {
        assert_eq!(
            redact("https://hc-ping.com/0f3c-secret-uuid"),
            "https://hc-ping.com/…"
        );
        assert_eq!(redact("http://127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("abc", 2), "bc");
    }
}
