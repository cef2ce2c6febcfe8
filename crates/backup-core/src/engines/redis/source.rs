//! Redis sources: the RDB fetched over the network the way a replica (or `redis-cli --rdb`)
//! gets it, with no filesystem access to the server and no dump.rdb written there; or, where
//! replication commands are not allowed, `BGSAVE` and a copy of the saved file.
//!
//! Handshake: optional `AUTH`, `REPLCONF capa eof` (so the server streams diskless instead of
//! saving to its disk first), `REPLCONF rdb-only 1` (7.0+; older servers refuse it harmlessly),
//! `SYNC`. The server sends `\n` keepalives, then `$EOF:<40-byte mark>\r\n`, the RDB and the
//! mark again (or `$<len>\r\n` and len bytes). The RDB's header and CRC-64 trailer are checked
//! as it streams: a truncated or corrupted transfer fails the item.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::TcpStream;

use super::rdb::{RdbCheck, RdbSummary};
use super::resp::{RedisConn, RedisUrl, Reply};
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};
use crate::source::{ByteStream, Source};

/// How the RDB is obtained.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// Replica-style SYNC over the network (default).
    #[default]
    Replication,
    /// `BGSAVE`, wait for it, then read the server's dump file at this path (same host).
    Bgsave { rdb_path: PathBuf },
}

/// Options of a Redis source.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub mode: RedisMode,
    /// Longest silence tolerated from the server (keepalives count as life).
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            mode: RedisMode::Replication,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Backs up one Redis server as an RDB item.
pub struct RedisSource {
    name: String,
    url: RedisUrl,
    opts: RedisOptions,
    facts: Facts,
    task: Option<tokio::task::JoinHandle<std::result::Result<RdbSummary, String>>>,
}

impl RedisSource {
    /// Item `name` for the server at `url` (`redis://[user:pass@]host:port`).
    pub fn new(name: impl Into<String>, url: &str, opts: RedisOptions) -> Result<Self> {
        let name = name.into();
        let url = RedisUrl::parse(url).map_err(|d| Error::SourceFailed {
            item: name.clone(),
            detail: d,
        })?;
        Ok(RedisSource {
            name,
            url,
            opts,
            facts: Facts::new(),
            task: None,
        })
    }

    /// Uses this password (from a file or environment), whatever the URL says.
    pub fn with_password(mut self, password: String) -> Self {
        self.url.password = Some(password);
        self
    }

    fn fail(&self, detail: impl Into<String>) -> Error {
        Error::SourceFailed {
            item: self.name.clone(),
            detail: detail.into(),
        }
    }
}

/// `INFO keyspace` lines (`db0:keys=3,expires=1,avg_ttl=0`) as `{"db0": {"keys": 3, "expires": 1}}`.
pub fn parse_keyspace(info: &[(String, String)]) -> BTreeMap<String, Value> {
    info.iter()
        .filter(|(k, _)| k.starts_with("db"))
        .map(|(db, v)| {
            let field = |name: &str| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            (
                db.clone(),
                json!({"keys": field("keys"), "expires": field("expires")}),
            )
        })
        .collect()
}

/// Facts from INFO, best effort: a user limited to replication commands may not run INFO.
async fn server_facts(conn: &mut RedisConn) -> Facts {
    let mut f = Facts::new();
    match conn.info("everything").await {
        Ok(info) => {
            let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            for (fact, key) in [
                ("redis_version", "redis_version"),
                ("redis_mode", "redis_mode"),
                ("role", "role"),
            ] {
                if let Some(v) = get(key) {
                    f.insert(fact.into(), v.into());
                }
            }
            if let Some(m) = get("used_memory").and_then(|v| v.parse::<u64>().ok()) {
                f.insert("used_memory".into(), m.into());
            }
            f.insert(
                "aof_enabled".into(),
                (get("aof_enabled").as_deref() == Some("1")).into(),
            );
            f.insert("keyspace".into(), json!(parse_keyspace(&info)));
        }
        Err(e) => {
            f.insert("info".into(), format!("not available: {e}").into());
        }
    }
    f
}

#[async_trait]
impl Source for RedisSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        ItemKind::Redis
    }
    fn format(&self) -> &str {
        "rdb"
    }

    async fn open(&mut self) -> Result<ByteStream> {
        let shown = self.url.redacted();
        let mut conn = RedisConn::connect(&self.url, self.opts.timeout)
            .await
            .map_err(|e| self.fail(format!("{shown}: {e}")))?;
        self.facts = server_facts(&mut conn).await;
        let (w, r) = tokio::io::duplex(1 << 20);
        let timeout = self.opts.timeout;
        match self.opts.mode.clone() {
            RedisMode::Replication => {
                self.facts.insert("mode".into(), "replication".into());
                conn.ok(&[b"REPLCONF", b"capa", b"eof"])
                    .await
                    .map_err(|e| self.fail(format!("{shown} refused REPLCONF capa eof: {e}")))?;
                // Redis < 7.0 answers with an error; it then also streams the replication feed
                // after the RDB, which we never read.
                let _ = conn.command(&[b"REPLCONF", b"rdb-only", b"1"]).await;
                conn.send(&[b"SYNC"]).await.map_err(|e| self.fail(e))?;
                let stream = conn.into_stream();
                self.task = Some(tokio::spawn(pump_sync(stream, w, timeout)));
            }
            RedisMode::Bgsave { rdb_path } => {
                self.facts.insert("mode".into(), "bgsave".into());
                bgsave(&mut conn, timeout)
                    .await
                    .map_err(|e| self.fail(format!("{shown}: {e}")))?;
                let file = tokio::fs::File::open(&rdb_path)
                    .await
                    .map_err(|e| self.fail(format!("reading {}: {e}", rdb_path.display())))?;
                self.task = Some(tokio::spawn(pump_file(file, w)));
            }
        }
        Ok(Box::new(r))
    }

    async fn finish(&mut self) -> Result<Facts> {
        let task = self
            .task
            .take()
            .ok_or_else(|| self.fail("finish before open"))?;
        let summary = task
            .await
            .map_err(|e| self.fail(format!("transfer task: {e}")))?
            .map_err(|e| self.fail(format!("{}: {e}", self.url.redacted())))?;
        let mut facts = std::mem::take(&mut self.facts);
        facts.insert("rdb_version".into(), summary.version.into());
        facts.insert("rdb_bytes".into(), summary.bytes.into());
        facts.insert(
            "rdb_checksum_verified".into(),
            summary.checksum_verified.into(),
        );
        Ok(facts)
    }
}

async fn read_timeout<F: std::future::Future<Output = std::io::Result<usize>>>(
    timeout: Duration,
    f: F,
) -> std::result::Result<usize, String> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| format!("the server sent nothing for {}s", timeout.as_secs()))?
        .map_err(|e| format!("reading the transfer: {e}"))
}

/// Reads the SYNC reply: keepalives, the payload header, the RDB (checked), the end mark.
async fn pump_sync(
    mut s: BufReader<TcpStream>,
    mut w: DuplexStream,
    timeout: Duration,
) -> std::result::Result<RdbSummary, String> {
    let mut byte = [0u8; 1];
    loop {
        if read_timeout(timeout, s.read(&mut byte)).await? == 0 {
            return Err("connection closed before the transfer started".into());
        }
        match byte[0] {
            b'\n' => continue, // keepalive while the server prepares the snapshot
            b'$' => break,
            b'-' => {
                let mut line = String::new();
                let _ = read_timeout(timeout, s.read_line(&mut line)).await;
                return Err(format!("SYNC refused: {}", line.trim()));
            }
            other => return Err(format!("unexpected byte {other:#04x} before the transfer")),
        }
    }
    let mut line = String::new();
    read_timeout(timeout, s.read_line(&mut line)).await?;
    let line = line.trim_end();
    let mut chk = RdbCheck::default();
    let mut buf = vec![0u8; 64 * 1024];
    let write = |e: std::io::Error| format!("pipeline stopped reading: {e}");
    if let Some(mark) = line.strip_prefix("EOF:") {
        let mark = mark.as_bytes().to_vec();
        if mark.len() != 40 {
            return Err(format!("bad end mark length {}", mark.len()));
        }
        // Hold back the last 40 bytes: they are the end mark once the server stops.
        let mut pending: Vec<u8> = Vec::with_capacity(buf.len() + 40);
        loop {
            let n = read_timeout(timeout, s.read(&mut buf)).await?;
            if n == 0 {
                return Err(format!(
                    "connection closed before the end mark: transfer truncated after {} bytes",
                    chk.bytes_seen() + pending.len() as u64
                ));
            }
            pending.extend_from_slice(&buf[..n]);
            if pending.len() > 40 {
                let cut = pending.len() - 40;
                chk.update(&pending[..cut])?;
                w.write_all(&pending[..cut]).await.map_err(write)?;
                pending.drain(..cut);
            }
            if pending == mark {
                break;
            }
        }
    } else {
        let len: u64 = line
            .parse()
            .map_err(|_| format!("unexpected transfer header {line:?}"))?;
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = read_timeout(timeout, s.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} of {len} bytes: transfer truncated",
                    len - left
                ));
            }
            chk.update(&buf[..n])?;
            w.write_all(&buf[..n]).await.map_err(write)?;
            left -= n as u64;
        }
    }
    w.shutdown().await.map_err(write)?;
    chk.finish()
}

async fn pump_file(
    mut f: tokio::fs::File,
    mut w: DuplexStream,
) -> std::result::Result<RdbSummary, String> {
    let mut chk = RdbCheck::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the dump file: {e}"))?;
        if n == 0 {
            break;
        }
        chk.update(&buf[..n])?;
        w.write_all(&buf[..n])
            .await
            .map_err(|e| format!("pipeline stopped reading: {e}"))?;
    }
    w.shutdown().await.map_err(|e| e.to_string())?;
    chk.finish()
}

/// Triggers a BGSAVE and waits until it completed (not a sleep: `INFO persistence`).
async fn bgsave(conn: &mut RedisConn, timeout: Duration) -> std::result::Result<(), String> {
    let persistence = |info: &[(String, String)], k: &str| {
        info.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let started = Instant::now();
    let before = conn.info("persistence").await?;
    let last_before = persistence(&before, "rdb_last_save_time");
    // rdb_saves (7.0+) counts completed saves; older servers only have a one-second clock.
    let saves_before = persistence(&before, "rdb_saves").parse::<u64>().ok();
    loop {
        match conn.command(&[b"BGSAVE"]).await? {
            Reply::Error(e) if e.contains("in progress") => {
                // Someone else's save is running: let it finish, then take our own.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Reply::Error(e) => return Err(format!("BGSAVE refused: {e}")),
            _ => break,
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err("another BGSAVE has been running for an hour".into());
        }
    }
    let mut saw_progress = false;
    let mut last_change = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = conn.info("persistence").await?;
        if persistence(&info, "rdb_bgsave_in_progress") == "1" {
            saw_progress = true;
            last_change = Instant::now();
            continue;
        }
        let done = match (
            saves_before,
            persistence(&info, "rdb_saves").parse::<u64>().ok(),
        ) {
            (Some(b), Some(now)) => now > b,
            _ => saw_progress || persistence(&info, "rdb_last_save_time") != last_before,
        };
        let status = persistence(&info, "rdb_last_bgsave_status");
        if done || status == "err" {
            return match status.as_str() {
                "ok" => Ok(()),
                other => Err(format!(
                    "BGSAVE failed (rdb_last_bgsave_status:{other}); see the server's log"
                )),
            };
        }
        if last_change.elapsed() > timeout {
            return Err(format!(
                "BGSAVE did not complete within {}s",
                timeout.as_secs()
            ));
        }
    }
}
