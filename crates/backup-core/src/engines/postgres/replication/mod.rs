//! PostgreSQL's streaming replication protocol, client side, as much as `wal stream` needs.
//!
//! Our own client rather than `pg_receivewal`: the position confirmed to the server (which
//! releases WAL from the slot, and which synchronous commits wait for) must be what is durable
//! in the repository, and `pg_receivewal` confirms what is on its local disk. Bottom up:
//! `params` (connection string, environment, `.pgpass`), `auth` (password, MD5,
//! SCRAM-SHA-256), `client` (messages, queries, the COPY BOTH stream), and here the
//! replication commands.

pub mod auth;
pub mod client;
pub mod params;

pub use client::{Connection, StreamEvent};
pub use params::ConnParams;

use crate::engines::postgres::wal::{ClusterId, parse_lsn};
use crate::error::{Error, Result};

/// What `IDENTIFY_SYSTEM` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemInfo {
    pub cluster: ClusterId,
    /// The server's current timeline.
    pub timeline: u32,
    /// Its current flush position.
    pub position: u64,
}

impl Connection {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify(&mut self) -> Result<SystemInfo> {
        let rows = self.query("IDENTIFY_SYSTEM").await?;
        let row = rows.first();
        let field = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        let info = (|| {
            Some(SystemInfo {
                cluster: ClusterId(field(0)?.parse().ok()?),
                timeline: field(1)?.parse().ok()?,
                position: parse_lsn(&field(2)?)?,
            })
        })();
        info.ok_or_else(|| self.reader_error(format!("IDENTIFY_SYSTEM answered {rows:?}")))
    }

    /// The server's WAL segment size (`SHOW wal_segment_size`, e.g. `16MB`).
    pub async fn segment_size(&mut self) -> Result<u64> {
        let rows = self.query("SHOW wal_segment_size").await?;
        let text = rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        parse_size(&text)
            .ok_or_else(|| self.reader_error(format!("wal_segment_size {text:?} is not a size")))
    }

    /// Creates the physical slot `name` reserving WAL from now, unless it exists; `true` when
    /// it was created.
    pub async fn ensure_slot(&mut self, name: &str) -> Result<bool> {
        let sql = format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL RESERVE_WAL");
        match self.query(&sql).await {
            Ok(_) => Ok(true),
            Err(Error::Replication { detail, .. })
                if client::sqlstate(&detail) == Some("42710") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and content.
    pub async fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>)> {
        let rows = self.query(&format!("TIMELINE_HISTORY {timeline}")).await?;
        match rows
            .first()
            .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
        {
            Some((Some(name), Some(content))) => Ok((name, content.into_bytes())),
            _ => Err(self.reader_error(format!("TIMELINE_HISTORY {timeline} returned no file"))),
        }
    }

    fn reader_error(&self, detail: String) -> Error {
        Error::Replication {
            server: self.server().to_string(),
            detail,
        }
    }
}

/// `16MB`, `1GB`, `512kB` (PostgreSQL's units for sizes) in bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.parse::<u64>().ok().map(|n| n * mult)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_postgres_units() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("512kB"), Some(512 << 10));
        assert_eq!(parse_size("16 parsecs"), None);
    }
}
