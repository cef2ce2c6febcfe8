//! A PostgreSQL item's facts, taken in the dump's own snapshot: versions, the database, row
//! and schema object counts. Restores and drills compare what they restored against them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engines::{CheckOutcome, lenient, read_facts};
use crate::manifest::Item;

/// The facts a restore or a drill reads (the manifest holds more: sizes, encoding, extensions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostgresFacts {
    /// The database dumped (its name on restore unless the target says otherwise).
    #[serde(default, deserialize_with = "lenient")]
    pub database: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub server_version: Option<String>,
    /// The pg_dump that wrote the dump: an older pg_restore cannot read it.
    #[serde(default, deserialize_with = "lenient")]
    pub pg_dump_major: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub pg_dump_version: Option<String>,
    /// Whether `row_counts` are exact (`count(*)` in the snapshot) or planner estimates.
    #[serde(default, deserialize_with = "lenient")]
    pub row_counts_exact: Option<bool>,
    /// Rows by `schema.table`.
    #[serde(default, deserialize_with = "lenient")]
    pub row_counts: Option<BTreeMap<String, u64>>,
    /// Schema object counts ([`super::OBJECTS_SQL`]), as the server returned them.
    #[serde(default, deserialize_with = "lenient")]
    pub objects: Option<serde_json::Value>,
}

impl PostgresFacts {
    pub fn of(item: &Item) -> Self {
        read_facts(&item.facts)
    }

    /// Rows by table a restore must reproduce: exact counts only (estimates prove nothing).
    pub fn exact_counts(&self) -> BTreeMap<String, u64> {
        match (self.row_counts_exact, &self.row_counts) {
            (Some(true), Some(c)) => c.clone(),
            _ => BTreeMap::new(),
        }
    }

    /// Drill check: a restored database has the schema object counts the dump recorded.
    pub async fn check_objects(&self, url: &str) -> CheckOutcome {
        let Some(want) = &self.objects else {
            return Ok("no object counts recorded".into());
        };
        let got = super::drill::query_json(url, super::OBJECTS_SQL).await?;
        if &got == want {
            Ok(got.to_string())
        } else {
            Err(format!("recorded {want}, restored {got}"))
        }
    }
}
