//! `[monitor]` around `lifeboat-backup run`, against a real HTTP listener on loopback: pings
//! (start, success, fail) with the run's output as body, JSON webhooks with headers from
//! files, notifier commands; a monitor that cannot be reached does not fail the run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One request as the listener saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server: records every request, answers 200.
struct Listener {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Listener {
    fn start() -> Listener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                log.lock().unwrap().push(Request {
                    method,
                    path,
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let mut w = conn;
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Listener { port, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A repository and a config whose only source is the command `db` and whose `[monitor]`
    /// section is `monitor`.
    fn new(db_command: &str, monitor: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "correct horse\n").unwrap();
        std::fs::write(dir.path().join("token"), "Bearer s3cret\n").unwrap();
        let e = Env { dir };
        let cfg = format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n\n{monitor}\n\n[sources.db]\ntype = \"command\"\ncommand = \"{db_command}\"\n",
            e.p("repo").display(),
            e.p("pw").display(),
        );
        std::fs::write(e.p("lifeboat.toml"), cfg).unwrap();
        let init = e.run(&["init", "--kdf-memory-mib", "1", "--kdf-iterations", "1"]);
        assert!(init.status.success(), "{}", stderr(&init));
        e
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_lifeboat-backup"))
            .arg("--config")
            .arg(self.p("lifeboat.toml"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LIFEBOAT_CACHE_DIR", self.p("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn monitor_section(port: u16, dir: &std::path::Path) -> String {
    format!(
        "[monitor]\nping_url = \"http://127.0.0.1:{port}/ping/0f3c\"\n\n[[monitor.webhook]]\nurl = \"http://127.0.0.1:{port}/hook\"\nheaders = {{ X-Stack = \"shop\" }}\nheader_files = {{ Authorization = \"{}\" }}\n\n[[monitor.webhook]]\nurl = \"http://127.0.0.1:{port}/only-failures\"\non = [\"failure\"]\n\n[[monitor.command]]\ncommand = \"cat > {}\"\n",
        dir.join("token").display(),
        dir.join("notified.json").display()
    )
}

#[test]
fn a_successful_run_pings_start_and_success_and_calls_the_webhook() {
    let l = Listener::start();
    let e = Env::new("printf dump-bytes", "");
    let cfg = std::fs::read_to_string(e.p("lifeboat.toml")).unwrap();
    std::fs::write(
        e.p("lifeboat.toml"),
        format!("{cfg}\n{}", monitor_section(l.port, e.dir.path())),
    )
    .unwrap();
    let out = e.run(&["run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = common::summary(&out);
    let snapshot = report["snapshot"].as_str().unwrap();
    let reqs = l.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/ping/0f3c/start", "/ping/0f3c", "/hook"],
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| r.method == "POST"));
    assert!(
        reqs[1]
            .body
            .contains(&format!("snapshot {} saved", &snapshot[..8])),
        "the ping carries the run's result: {:?}",
        reqs[1].body
    );
    let hook = &reqs[2];
    assert_eq!(
        hook.header("authorization"),
        Some("Bearer s3cret"),
        "from the header file"
    );
    assert_eq!(hook.header("x-stack"), Some("shop"));
    assert_eq!(hook.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(j["outcome"], "success");
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["snapshot"], snapshot);
    assert_eq!(j["items"][0]["name"], "db");
    assert_eq!(j["items"][0]["size"], 10);
    let notified: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.p("notified.json")).unwrap()).unwrap();
    assert_eq!(
        notified["snapshot"], snapshot,
        "the command got the summary on stdin"
    );
}

#[test]
fn a_failed_run_pings_fail_and_the_webhook_carries_the_error_and_exit_code() {
    let l = Listener::start();
    let e = Env::new("echo no database >&2; exit 3", "");
    let cfg = std::fs::read_to_string(e.p("lifeboat.toml")).unwrap();
    std::fs::write(
        e.p("lifeboat.toml"),
        format!("{cfg}\n{}", monitor_section(l.port, e.dir.path())),
    )
    .unwrap();
    let out = e.run(&["run"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let reqs = l.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/ping/0f3c/start",
            "/ping/0f3c/fail",
            "/hook",
            "/only-failures"
        ],
        "{reqs:?}"
    );
    assert!(
        reqs[1].body.contains("no snapshot was written") && reqs[1].body.contains("error:"),
        "{:?}",
        reqs[1].body
    );
    let j: serde_json::Value = serde_json::from_str(&reqs[2].body).unwrap();
    assert_eq!(j["outcome"], "failure");
    assert_eq!(j["exit_code"], 1);
    assert!(j["snapshot"].is_null());
    let err = j["error"].as_str().unwrap();
    assert!(err.contains("db"), "names the failed source: {err}");
}

#[test]
fn an_unreachable_monitor_is_a_warning_and_the_backup_stands() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = Env::new(
        "printf dump-bytes",
        &format!(
            "[monitor]\nping_url = \"http://127.0.0.1:{port}/ping/secret-uuid\"\ntimeout = \"2s\"\n"
        ),
    );
    let out = e.run(&["run"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: notifying http://127.0.0.1:") && err.contains("failed"),
        "{err}"
    );
    assert!(
        !err.contains("secret-uuid"),
        "the URL's secret path is not shown: {err}"
    );
    let snaps = e.run(&["snapshots", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&snaps.stdout).unwrap();
    assert_eq!(v.len(), 1, "the snapshot stands");
}
