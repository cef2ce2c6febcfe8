//! A `psql` coprocess as the SQL session: libpq does the connecting, so sslmode, `.pgpass`,
//! service files and client certificates behave exactly as they do for `pg_dump`.
//!
//! Every query returns one JSON value (the SQL builds it), printed unaligned; a sentinel line
//! after each query marks its end. With `ON_ERROR_STOP` psql exits on the first error, and its
//! stderr (PostgreSQL's own message) becomes ours.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::engines::postgres::PgTools;

const SENTINEL: &str = "__lifeboat_end_of_result__";

/// Why a session failed; the caller wraps it into an item-specific error.
pub type SessionError = String;

/// One open psql session.
pub struct PsqlSession {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: Arc<Mutex<String>>,
}

impl PsqlSession {
    /// Connects to `conninfo` and checks the connection with a first query.
    pub async fn connect(tools: &PgTools, conninfo: &str) -> Result<PsqlSession, SessionError> {
        let mut cmd = Command::new(tools.program("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-w",
            "-v",
            "ON_ERROR_STOP=1",
            "-P",
            "pager=off",
            "-d",
            conninfo,
        ]);
        tools.apply_env(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start psql: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = String::new();
            let _ = err_pipe.read_to_string(&mut buf).await;
            sink.lock().unwrap().push_str(&buf);
        });
        let mut s = PsqlSession {
            stdin: child.stdin.take().expect("piped"),
            stdout: BufReader::new(child.stdout.take().expect("piped")),
            child,
            stderr,
        };
        s.json("SELECT to_json(1)").await?;
        Ok(s)
    }

    /// Runs a statement whose single result is one JSON value.
    pub async fn json(&mut self, sql: &str) -> Result<serde_json::Value, SessionError> {
        let text = self.run(sql).await?;
        serde_json::from_str(text.trim())
            .map_err(|e| format!("unexpected psql output {text:?}: {e}"))
    }

    /// Runs a statement that returns nothing useful (BEGIN, SET…).
    pub async fn exec(&mut self, sql: &str) -> Result<(), SessionError> {
        self.run(sql).await.map(|_| ())
    }

    async fn run(&mut self, sql: &str) -> Result<String, SessionError> {
        let script = format!("{};\n\\echo {SENTINEL}\n", sql.trim().trim_end_matches(';'));
        if self.stdin.write_all(script.as_bytes()).await.is_err()
            || self.stdin.flush().await.is_err()
        {
            return Err(self.failure().await);
        }
        let mut out = String::new();
        loop {
            let mut line = String::new();
            match self.stdout.read_line(&mut line).await {
                Ok(0) | Err(_) => return Err(self.failure().await),
                Ok(_) if line.trim_end() == SENTINEL => return Ok(out),
                Ok(_) => out.push_str(&line),
            }
        }
    }

    /// psql died: wait for it and return what it said.
    async fn failure(&mut self) -> SessionError {
        let _ = self.child.wait().await;
        // Give the stderr reader a moment to collect the last message.
        for _ in 0..20 {
            if !self.stderr.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let msg = self.stderr.lock().unwrap().trim().to_string();
        if msg.is_empty() {
            "psql exited without a message".into()
        } else {
            msg
        }
    }

    /// Ends the session (rolling back any open transaction) and waits for psql.
    pub async fn close(mut self) {
        let _ = self.stdin.write_all(b"\\q\n").await;
        drop(self.stdin);
        let _ = self.child.wait().await;
    }
}
