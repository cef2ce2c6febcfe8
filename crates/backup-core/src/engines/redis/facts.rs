//! A Redis item's facts, from INFO at backup time: version, persistence, keys per database.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engines::{lenient, read_facts};
use crate::manifest::Item;

/// The facts a restore or a drill reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedisFacts {
    #[serde(default, deserialize_with = "lenient")]
    pub redis_version: Option<String>,
    /// The server ran with AOF on: it ignores a dump.rdb until AOF is off.
    #[serde(default, deserialize_with = "lenient")]
    pub aof_enabled: Option<bool>,
    /// `INFO keyspace` by database (`db0` → `{keys, expires, …}`).
    #[serde(default, deserialize_with = "lenient")]
    pub keyspace: Option<BTreeMap<String, serde_json::Value>>,
}

impl RedisFacts {
    pub fn of(item: &Item) -> Self {
        read_facts(&item.facts)
    }
}

/// Keys in one database's `INFO keyspace` entry.
pub fn keys_of(db: Option<&serde_json::Value>) -> u64 {
    db.and_then(|x| x.get("keys"))
        .and_then(|k| k.as_u64())
        .unwrap_or(0)
}
