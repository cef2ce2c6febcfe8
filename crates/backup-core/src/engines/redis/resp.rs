//! A minimal RESP2 client over TCP: enough for AUTH, INFO, CONFIG, BGSAVE and the replication
//! handshake (redis-rs has no replication support, and we need the raw socket for SYNC).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple string or bulk), if it is one.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// `redis://[user[:password]@]host[:port][/db]`, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl RedisUrl {
    /// Parses a URL; `rediss://` (TLS) is refused with an explanation.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        if url.starts_with("rediss://") {
            return Err("rediss:// (TLS) is not supported yet: back up through a TLS tunnel (stunnel, spiped) on localhost, or use mode = \"bgsave\"".into());
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{} is not a redis:// URL", redact(url)))?;
        let rest = rest.split(['/', '?']).next().unwrap_or("");
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (
                    (!user.is_empty()).then(|| user.to_string()),
                    Some(pw.to_string()),
                ),
                // `redis://backup@host`: a user name, as in any URL (the password then comes
                // from password_file, password_env or REDISCLI_AUTH).
                None => ((!u.is_empty()).then(|| u.to_string()), None),
            },
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("bad port in {}", redact(url)))?,
            ),
            None => (hostport.to_string(), 6379),
        };
        if host.is_empty() {
            return Err(format!("no host in {}", redact(url)));
        }
        Ok(RedisUrl {
            host,
            port,
            user,
            password,
        })
    }

    /// `redis://user:***@host:port`.
    pub fn redacted(&self) -> String {
        let auth = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => "***@".into(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        format!("redis://{auth}{}:{}", self.host, self.port)
    }
}

fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("redis://***@{host}"),
        None => url.to_string(),
    }
}

/// One connection.
pub struct RedisConn {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl RedisConn {
    /// Connects and authenticates (AUTH user pass, or AUTH pass).
    pub async fn connect(url: &RedisUrl, timeout: Duration) -> Result<RedisConn, String> {
        let addr = format!("{}:{}", url.host, url.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                format!(
                    "connecting to {addr} timed out after {}s",
                    timeout.as_secs()
                )
            })?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut c = RedisConn {
            stream: BufReader::new(tcp),
            timeout,
        };
        if let Some(pw) = &url.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = &url.user {
                args.push(u.as_bytes());
            }
            args.push(pw.as_bytes());
            c.ok(&args).await.map_err(|e| format!("AUTH failed: {e}"))?;
        }
        Ok(c)
    }

    /// Sends a command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.send(args).await?;
        self.read_reply().await
    }

    /// Sends a command that must not return an error; returns the reply.
    pub async fn ok(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        match self.command(args).await? {
            Reply::Error(e) => Err(e),
            r => Ok(r),
        }
    }

    /// `INFO section` as key → value.
    pub async fn info(&mut self, section: &str) -> Result<Vec<(String, String)>, String> {
        let r = self.ok(&[b"INFO", section.as_bytes()]).await?;
        let text = r.text().unwrap_or_default();
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// Writes a command without reading a reply.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        let w = self.stream.get_mut().write_all(&buf);
        tokio::time::timeout(self.timeout, w)
            .await
            .map_err(|_| "write timed out".to_string())?
            .map_err(|e| format!("write failed: {e}"))
    }

    async fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = tokio::time::timeout(self.timeout, self.stream.read_line(&mut line))
            .await
            .map_err(|_| format!("no reply within {}s", self.timeout.as_secs()))?
            .map_err(|e| format!("read failed: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Reads one reply.
    pub async fn read_reply(&mut self) -> Result<Reply, String> {
        let line = self.line().await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(
                rest.parse()
                    .map_err(|_| format!("bad integer reply {line:?}"))?,
            ),
            "$" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| format!("bad bulk length {line:?}"))?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    tokio::time::timeout(self.timeout, self.stream.read_exact(&mut b))
                        .await
                        .map_err(|_| "bulk read timed out".to_string())?
                        .map_err(|e| format!("read failed: {e}"))?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => {
                let n: i64 = rest
                    .parse()
                    .map_err(|_| format!("bad array length {line:?}"))?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(Box::pin(self.read_reply()).await?);
                    }
                    Reply::Array(Some(v))
                }
            }
            _ => return Err(format!("unexpected reply {line:?}")),
        })
    }

    /// The underlying buffered stream, for the raw replication payload.
    pub fn into_stream(self) -> BufReader<TcpStream> {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://backup:s3cret@cache.internal:6380/0").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("cache.internal", 6380));
        assert_eq!(
            (u.user.as_deref(), u.password.as_deref()),
            (Some("backup"), Some("s3cret"))
        );
        assert_eq!(u.redacted(), "redis://backup:***@cache.internal:6380");
        let p = RedisUrl::parse("redis://:pw@h").unwrap();
        assert_eq!(
            (p.user, p.password.as_deref(), p.port),
            (None, Some("pw"), 6379)
        );
        let user_only = RedisUrl::parse("redis://backup@h:7000").unwrap();
        assert_eq!(
            (
                user_only.user.as_deref(),
                user_only.password,
                user_only.port
            ),
            (Some("backup"), None, 7000)
        );
        assert!(RedisUrl::parse("rediss://h").unwrap_err().contains("TLS"));
        assert!(RedisUrl::parse("http://h").is_err());
    }
}
