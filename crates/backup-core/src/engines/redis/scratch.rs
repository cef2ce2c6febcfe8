//! A throw-away `redis-server` on a free port, optionally loading an RDB; and the fixture data
//! set (every core type, several databases) used by tests and the demo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::engines::redis::parse_keyspace;
use crate::engines::redis::resp::{RedisConn, RedisUrl};
use crate::error::{Error, Result};
use crate::scratch::{find_program, free_port, temp_dir};

/// A running scratch server, killed and its directory removed on drop unless kept.
#[derive(Debug)]
pub struct ScratchRedis {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    keep: bool,
}

/// Options for a scratch server.
#[derive(Debug, Clone, Default)]
pub struct ScratchRedisOptions {
    /// An RDB to load at start (copied into the server's directory as dump.rdb).
    pub rdb: Option<PathBuf>,
    /// `requirepass`.
    pub password: Option<String>,
    /// Extra `redis-server` arguments (`--rename-command SYNC ""`…).
    pub args: Vec<String>,
}

fn fail(detail: impl Into<String>) -> Error {
    Error::SourceFailed {
        item: "scratch redis".into(),
        detail: detail.into(),
    }
}

impl ScratchRedis {
    /// Starts `redis-server` and waits until it has loaded its data.
    pub async fn start(opts: ScratchRedisOptions) -> Result<ScratchRedis> {
        let bin = find_program("redis-server", &[]).ok_or_else(|| {
            Error::Usage("redis-server not found: install the redis-server package".into())
        })?;
        let dir = temp_dir("lifeboat-redis")?;
        if let Some(rdb) = &opts.rdb {
            std::fs::copy(rdb, dir.join("dump.rdb"))
                .map_err(|e| Error::io(format!("copying {}", rdb.display()), e))?;
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--dbfilename",
                "dump.rdb",
                "--repl-diskless-sync-delay",
                "0",
                "--daemonize",
                "no",
            ])
            .args(["--logfile", "server.log"])
            .arg("--dir")
            .arg(&dir);
            if let Some(pw) = &opts.password {
                cmd.args(["--requirepass", pw]);
            }
            cmd.args(&opts.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd
                .spawn()
                .map_err(|e| Error::io("starting redis-server", e))?;
            let mut s = ScratchRedis {
                child: Some(child),
                dir: dir.clone(),
                port,
                keep: false,
            };
            match s.wait_ready(opts.password.as_deref()).await {
                Ok(()) => return Ok(s),
                Err(e) => {
                    last_err = e;
                    s.kill();
                    s.keep = true; // keep the directory for the next attempt
                }
            }
        }
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        Err(fail(format!(
            "redis-server did not start: {last_err}\n{}",
            log.trim()
        )))
    }

    async fn wait_ready(&mut self, password: Option<&str>) -> std::result::Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("redis-server exited with {st}"));
            }
            if let Ok(mut c) = self.connect_as(None, password).await
                && let Ok(info) = c.info("everything").await
            {
                let get = |k: &str| {
                    info.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                // Our child, not another process that grabbed the port.
                let pid = self
                    .child
                    .as_ref()
                    .map(|c| c.id().to_string())
                    .unwrap_or_default();
                if get("process_id") != pid {
                    return Err(format!("port {} is served by another process", self.port));
                }
                if get("loading") == "0" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("not ready within 60s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (holds dump.rdb and server.log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis://127.0.0.1:PORT` (with credentials when given).
    pub fn url_as(&self, user: Option<&str>, password: Option<&str>) -> String {
        let auth = match (user, password) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (None, Some(p)) => format!(":{p}@"),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        format!("redis://{auth}127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_as(None, None)
    }

    /// A connection (as the default user unless `user` is given).
    pub async fn connect_as(
        &self,
        user: Option<&str>,
        password: Option<&str>,
    ) -> std::result::Result<RedisConn, String> {
        let url = RedisUrl::parse(&self.url_as(user, password))?;
        RedisConn::connect(&url, Duration::from_secs(10)).await
    }

    /// Keys and expires per database, from `INFO keyspace`.
    pub async fn keyspace(
        &self,
        password: Option<&str>,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut c = self.connect_as(None, password).await.map_err(fail)?;
        Ok(parse_keyspace(&c.info("keyspace").await.map_err(fail)?))
    }

    /// Leaves the server running after drop (for inspection).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Kills the server (SIGKILL to our child, by PID).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fills a server with the fixture data set: strings (binary, large, integer-encoded), lists,
/// sets (intset and hashtable), sorted sets, hashes (small and large), a stream with a consumer
/// group and pending entries, keys with TTLs, in databases 0, 1 and 5.
pub async fn seed_fixture(c: &mut RedisConn) -> std::result::Result<(), String> {
    let big = "x".repeat(300_000);
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut cmds: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut add = |parts: &[&[u8]]| cmds.push(parts.iter().map(|p| p.to_vec()).collect());
    add(&[b"SELECT", b"0"]);
    add(&[b"SET", b"str:plain", b"hello world"]);
    add(&[b"SET", b"str:int", b"12345"]);
    add(&[b"SET", b"str:binary", &binary]);
    add(&[b"SET", b"str:large", big.as_bytes()]);
    add(&[b"SET", b"str:ttl", b"expires", b"EX", b"3600"]);
    add(&[b"RPUSH", b"list:small", b"a", b"b", b"c", b"a"]);
    add(&[b"SADD", b"set:ints", b"1", b"2", b"3", b"1000000"]);
    add(&[b"SADD", b"set:strs", b"alpha", b"beta", b"gamma"]);
    add(&[
        b"ZADD",
        b"zset:small",
        b"1",
        b"one",
        b"2.5",
        b"two-and-half",
        b"-3",
        b"minus-three",
    ]);
    add(&[b"HSET", b"hash:small", b"f1", b"v1", b"f2", b"v2"]);
    add(&[b"EXPIRE", b"hash:small", b"7200"]);
    add(&[
        b"XADD",
        b"stream:events",
        b"1-1",
        b"type",
        b"signup",
        b"user",
        b"42",
    ]);
    add(&[
        b"XADD",
        b"stream:events",
        b"2-1",
        b"type",
        b"order",
        b"amount",
        b"9.99",
    ]);
    add(&[b"XADD", b"stream:events", b"3-1", b"type", b"refund"]);
    add(&[b"XGROUP", b"CREATE", b"stream:events", b"billing", b"0"]);
    add(&[
        b"XREADGROUP",
        b"GROUP",
        b"billing",
        b"worker-1",
        b"COUNT",
        b"2",
        b"STREAMS",
        b"stream:events",
        b">",
    ]);
    for i in 0..600 {
        let (k, v) = (
            format!("field{i}"),
            format!("value-{i}-{}", "y".repeat(i % 50)),
        );
        add(&[b"HSET", b"hash:large", k.as_bytes(), v.as_bytes()]);
        let m = format!("member{i}");
        let score = format!("{}", i as f64 * 1.5);
        add(&[b"ZADD", b"zset:large", score.as_bytes(), m.as_bytes()]);
        add(&[b"RPUSH", b"list:large", v.as_bytes()]);
        add(&[b"SADD", b"set:large", m.as_bytes()]);
    }
    for i in 0..2000 {
        let k = format!("key:{i}");
        add(&[b"SET", k.as_bytes(), format!("{i}").as_bytes()]);
    }
    add(&[b"SELECT", b"1"]);
    add(&[b"SET", b"db1:only", b"in db 1"]);
    add(&[b"RPUSH", b"db1:queue", b"job1", b"job2"]);
    add(&[b"SET", b"db1:session", b"token", b"PX", b"86400000"]);
    add(&[b"SELECT", b"5"]);
    add(&[b"HSET", b"db5:cfg", b"mode", b"blue"]);
    for cmd in cmds {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_slice()).collect();
        c.ok(&args).await?;
    }
    c.ok(&[b"SELECT", b"0"]).await?;
    Ok(())
}
