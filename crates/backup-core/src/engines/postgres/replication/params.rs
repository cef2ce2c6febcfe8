//! Where and as whom a replication connection connects: a libpq connection string (URL or
//! `key=value`), the `PG*` variables and `~/.pgpass`, read as libpq reads them for the keys
//! a replication client needs (host, port, user, password, application_name, sslmode,
//! connect_timeout, passfile).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use super::client::Io;
use crate::engines::postgres::conninfo;
use crate::error::{Error, Result};

/// A server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A directory holding the Unix socket `.s.PGSQL.<port>`.
    Socket(PathBuf),
    Tcp(String),
}

/// Resolved connection parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// What `synchronous_standby_names` and `pg_stat_replication` know the streamer as.
    pub application_name: String,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ConnParams {
    /// Reads `conninfo`, then the environment for what it leaves out; `application_name`
    /// unless the string sets one; `password` (a configured password file's) unless the
    /// string has one, before `PGPASSWORD` and `~/.pgpass`.
    pub fn from_conninfo(
        conninfo: &str,
        application_name: &str,
        password: Option<&str>,
    ) -> Result<ConnParams> {
        let mut p = Self::resolve(conninfo, application_name, &|k| std::env::var(k).ok())?;
        let in_string = conninfo::params(conninfo)
            .iter()
            .any(|(k, _)| k == "password");
        if let (Some(pw), false) = (password, in_string) {
            p.password = Some(pw.to_string());
        }
        Ok(p)
    }

    fn resolve(
        conninfo: &str,
        application_name: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnParams> {
        let given = conninfo::params(conninfo);
        let get = |key: &str, var: &str| {
            given
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };
        let bad = |what: String| {
            Error::Usage(format!(
                "connection string {}: {what}",
                conninfo::redact(conninfo)
            ))
        };
        let sslmode = get("sslmode", "PGSSLMODE").unwrap_or_else(|| "prefer".into());
        if !matches!(sslmode.as_str(), "disable" | "allow" | "prefer") {
            return Err(bad(format!(
                "sslmode={sslmode}: wal stream speaks to the server without TLS (sslmode disable, allow or prefer); run it beside the server on a Unix socket, or through a tunnel"
            )));
        }
        let port_s = get("port", "PGPORT").unwrap_or_else(|| "5432".into());
        let port: u16 = port_s
            .split(',')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad(format!("port {port_s:?} is not a port number")))?;
        let host = match get("host", "PGHOST") {
            // Several hosts: the first (libpq would try each in turn).
            Some(h) => h.split(',').next().unwrap_or_default().to_string(),
            None => default_socket_dir(),
        };
        let host = if host.starts_with('/') || host.starts_with('@') {
            Host::Socket(PathBuf::from(host))
        } else {
            Host::Tcp(host)
        };
        let user = get("user", "PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .ok_or_else(|| bad("no user (user=, PGUSER)".into()))?;
        let connect_timeout = get("connect_timeout", "PGCONNECT_TIMEOUT")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map_or(Duration::from_secs(10), Duration::from_secs);
        let mut p = ConnParams {
            host,
            port,
            user,
            password: None,
            application_name: get("application_name", "PGAPPNAME")
                .unwrap_or_else(|| application_name.to_string()),
            connect_timeout,
        };
        p.password = get("password", "PGPASSWORD").or_else(|| {
            let file = get("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
            p.password_in_passfile(&std::fs::read_to_string(file).ok()?)
        });
        Ok(p)
    }

    /// The password `~/.pgpass` gives this connection (database `replication`; a socket
    /// directory matches `localhost`, as in libpq).
    fn password_in_passfile(&self, text: &str) -> Option<String> {
        let host = match &self.host {
            Host::Socket(_) => "localhost".to_string(),
            Host::Tcp(h) => h.clone(),
        };
        let want = [
            host,
            self.port.to_string(),
            "replication".into(),
            self.user.clone(),
        ];
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(split_pgpass)
            .filter(|f| f.len() == 5)
            .find(|f| {
                want.iter()
                    .zip(f)
                    .all(|(w, field)| field == "*" || field == w)
            })
            .map(|f| f[4].clone())
    }

    /// "user@host:port" or "user@/socket/dir:port", for messages.
    pub fn describe(&self) -> String {
        match &self.host {
            Host::Socket(d) => format!("{}@{}:{}", self.user, d.display(), self.port),
            Host::Tcp(h) => format!("{}@{h}:{}", self.user, self.port),
        }
    }

    /// Opens the byte stream.
    pub async fn dial(&self) -> Result<Box<dyn Io>> {
        let fail = |e: String| Error::Replication {
            server: self.describe(),
            detail: format!("cannot connect: {e}"),
        };
        let connect = async {
            match &self.host {
                Host::Socket(d) => {
                    let path = d.join(format!(".s.PGSQL.{}", self.port));
                    let s = UnixStream::connect(&path).await?;
                    Ok::<Box<dyn Io>, std::io::Error>(Box::new(s))
                }
                Host::Tcp(h) => {
                    let s = TcpStream::connect((h.as_str(), self.port)).await?;
                    s.set_nodelay(true)?;
                    Ok(Box::new(s) as Box<dyn Io>)
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail(format!("no answer in {:?}", self.connect_timeout))),
        }
    }
}

/// Debian's libpq looks for the socket in /var/run/postgresql; others in /tmp.
fn default_socket_dir() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".into()
    } else {
        "/tmp".into()
    }
}

/// The colon-separated fields of a `.pgpass` line (`\:` and `\\` escaped).
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_string_wins_over_the_environment() {
        let e = env(&[
            ("PGHOST", "/run/pg"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
        ]);
        let p = ConnParams::resolve("port=5555 user=rep", "lifeboat", &e).unwrap();
        assert_eq!(p.host, Host::Socket("/run/pg".into()));
        assert_eq!((p.port, p.user.as_str()), (5555, "rep"));
        assert_eq!(p.application_name, "lifeboat");
        let p = ConnParams::resolve(
            "postgresql://u:pw@127.0.0.1:7000/x?application_name=stream1",
            "lifeboat",
            &e,
        )
        .unwrap();
        assert_eq!(p.host, Host::Tcp("127.0.0.1".into()));
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.application_name, "stream1");
        assert!(!format!("{p:?}").contains("pw"));
    }

    #[test]
    fn tls_modes_are_refused_with_a_way_out() {
        let e = env(&[("USER", "x")]);
        let err = ConnParams::resolve("host=db sslmode=require", "l", &e).unwrap_err();
        assert!(err.to_string().contains("sslmode=require"), "{err}");
        assert!(ConnParams::resolve("host=db port=x", "l", &e).is_err());
    }

    #[test]
    fn pgpass_matches_the_replication_database() {
        let p = ConnParams::resolve("host=db port=5432 user=rep", "l", &env(&[])).unwrap();
        let text = "# comment\ndb:5432:app:rep:wrong\ndb:*:replication:rep:pa\\:ss\n*:*:*:*:any\n";
        assert_eq!(p.password_in_passfile(text).as_deref(), Some("pa:ss"));
        let sock = ConnParams::resolve("host=/tmp user=rep", "l", &env(&[])).unwrap();
        assert_eq!(
            sock.password_in_passfile("localhost:5432:*:rep:s\n")
                .as_deref(),
            Some("s")
        );
    }
}
