//! What a drill asks a restored Redis: load the RDB into a scratch server, compare its keys
//! with the facts, and answer one command.

use std::path::Path;

use super::resp::Reply;
use super::restore::compare_keyspace;
use super::scratch::{ScratchRedis, ScratchRedisOptions};
use crate::engines::CheckOutcome;
use crate::error::Result;
use crate::manifest::Item;

/// Starts a scratch redis-server on the restored RDB (the caller keeps it for later checks).
pub async fn load(rdb: &Path) -> Result<ScratchRedis> {
    ScratchRedis::start(ScratchRedisOptions {
        rdb: Some(rdb.to_path_buf()),
        ..Default::default()
    })
    .await
}

/// Drill check: the loaded server has as many keys per database as the backup recorded.
pub async fn check_keyspace(item: &Item, server: &ScratchRedis) -> CheckOutcome {
    let got = server.keyspace(None).await.map_err(|e| e.to_string())?;
    compare_keyspace(item, &got)
        .map(|n| format!("{n} database(s)"))
        .map_err(|e| e.to_string())
}

/// One command's reply in database `db`, as text.
pub async fn command_value(server: &ScratchRedis, db: u32, command: &[String]) -> CheckOutcome {
    let mut c = server.connect_as(None, None).await?;
    c.ok(&[b"SELECT", db.to_string().as_bytes()]).await?;
    let args: Vec<&[u8]> = command.iter().map(|a| a.as_bytes()).collect();
    Ok(match c.ok(&args).await? {
        Reply::Int(i) => i.to_string(),
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Reply::Simple(s) => s,
        other => format!("{other:?}"),
    })
}
