//! Does this run's data look like last time's? Each item is compared with the same source's
//! item in this host's newest snapshot holding it: a database pointed at an empty replica, an
//! unmounted volume or a flushed cache all back up "successfully" otherwise.

use serde::{Deserialize, Serialize};

use crate::engines::postgres::facts::PostgresFacts;
use crate::engines::redis::facts::{RedisFacts, keys_of};
use crate::engines::volume::facts::VolumeFacts;
use crate::manifest::{Item, ItemKind};
use crate::progress::human_bytes;

/// The fact an item carries its anomalies under (shown by `lifeboat-restore show`).
pub const FACT: &str = "anomalies";

/// What an anomaly does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAnomaly {
    /// Commit the snapshot, flagged, and say so.
    #[default]
    Warn,
    /// Fail the run before the snapshot is written.
    Fail,
}

/// A source's rules: `on_anomaly`, `min_files`, `min_bytes` in its config section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRules {
    #[serde(default)]
    pub on_anomaly: OnAnomaly,
    /// A volume with fewer regular files is an anomaly whatever came before (an empty mount
    /// point on the first run too).
    pub min_files: Option<u64>,
    /// An item smaller than this is an anomaly.
    pub min_bytes: Option<u64>,
}

/// A drop counts from this many rows, keys or files before (a queue table going from 3 rows
/// to none is a quiet night, not an incident) …
const TO_ZERO_FROM: u64 = 10;
/// … and a fall by more than half from this many.
const HALVED_FROM: u64 = 1000;
/// Items smaller than this before are not compared by size.
const SIZE_FROM: u64 = 1 << 20;

/// What is wrong with `item` against `previous` and `rules`, one sentence each.
pub fn check(item: &Item, previous: Option<&Item>, rules: &AnomalyRules) -> Vec<String> {
    let mut found = absolute(item, rules);
    if let Some(prev) = previous.filter(|p| p.kind == item.kind) {
        if prev.size >= SIZE_FROM && item.size < prev.size / 2 {
            found.push(format!(
                "size fell from {} to {} ({:.0}% less)",
                human_bytes(prev.size),
                human_bytes(item.size),
                100.0 - item.size as f64 * 100.0 / prev.size as f64
            ));
        }
        match item.kind {
            ItemKind::Postgres => found.extend(tables(item, prev)),
            ItemKind::Redis => found.extend(keyspace(item, prev)),
            ItemKind::Volume => found.extend(files(item, prev)),
            _ => {}
        }
    }
    found
}

/// Whether `before` → `now` is a drop worth stopping for.
fn dropped(before: u64, now: u64) -> bool {
    (before >= TO_ZERO_FROM && now == 0) || (before >= HALVED_FROM && now < before / 2)
}

fn absolute(item: &Item, rules: &AnomalyRules) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(min) = rules.min_bytes
        && item.size < min
    {
        found.push(format!(
            "{} is less than min_bytes ({})",
            human_bytes(item.size),
            human_bytes(min)
        ));
    }
    if let Some(min) = rules.min_files
        && item.kind == ItemKind::Volume
    {
        let n = VolumeFacts::of(item).files.unwrap_or(0);
        if n < min {
            found.push(format!("{n} files, fewer than min_files ({min})"));
        }
    }
    found
}

fn tables(item: &Item, prev: &Item) -> Vec<String> {
    let (now, before) = (PostgresFacts::of(item), PostgresFacts::of(prev));
    let (Some(now), Some(before)) = (now.row_counts, before.row_counts) else {
        return Vec::new();
    };
    before
        .iter()
        .filter_map(|(table, &was)| {
            let is = now.get(table).copied();
            match is {
                Some(is) if dropped(was, is) => {
                    Some(format!("table {table}: {was} rows before, {is} now"))
                }
                None if was >= TO_ZERO_FROM => {
                    Some(format!("table {table}: {was} rows before, gone now"))
                }
                _ => None,
            }
        })
        .collect()
}

fn keyspace(item: &Item, prev: &Item) -> Vec<String> {
    let (now, before) = (RedisFacts::of(item), RedisFacts::of(prev));
    let (now, before) = (
        now.keyspace.unwrap_or_default(),
        before.keyspace.unwrap_or_default(),
    );
    before
        .iter()
        .filter_map(|(db, v)| {
            let (was, is) = (keys_of(Some(v)), keys_of(now.get(db)));
            dropped(was, is).then(|| format!("redis {db}: {was} keys before, {is} now"))
        })
        .collect()
}

fn files(item: &Item, prev: &Item) -> Vec<String> {
    let (Some(was), Some(is)) = (VolumeFacts::of(prev).files, VolumeFacts::of(item).files) else {
        return Vec::new();
    };
    if dropped(was, is) {
        vec![format!("{was} files before, {is} now")]
    } else {
        Vec::new()
    }
}

/// The anomalies recorded on an item (none for items written before this check existed).
pub fn recorded(item: &Item) -> Vec<String> {
    item.facts
        .get(FACT)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: ItemKind, size: u64, facts: serde_json::Value) -> Item {
        Item {
            name: "x".into(),
            kind,
            format: String::new(),
            size,
            sha256: String::new(),
            digest: Default::default(),
            head: None,
            chunks: Vec::new(),
            catalog: None,
            started: chrono::Utc::now(),
            finished: chrono::Utc::now(),
            facts: serde_json::from_value(facts).unwrap(),
        }
    }

    #[test]
    fn drops_are_named_with_both_counts() {
        let pg = |orders: u64, queue: u64| {
            item(
                ItemKind::Postgres,
                5 << 20,
                serde_json::json!({"row_counts": {"public.orders": orders, "public.queue": queue}}),
            )
        };
        let rules = AnomalyRules::default();
        assert!(check(&pg(5000, 3), Some(&pg(5000, 4)), &rules).is_empty());
        assert_eq!(
            check(&pg(0, 0), Some(&pg(5000, 3)), &rules),
            ["table public.orders: 5000 rows before, 0 now"],
            "a queue of 3 rows emptying is not an anomaly"
        );
        assert_eq!(
            check(&pg(2000, 0), Some(&pg(5000, 0)), &rules),
            ["table public.orders: 5000 rows before, 2000 now"]
        );
        let vol = |files: u64, size: u64| {
            item(ItemKind::Volume, size, serde_json::json!({"files": files}))
        };
        assert_eq!(
            check(&vol(0, 10240), Some(&vol(51, 8 << 20)), &rules),
            [
                "size fell from 8.0 MiB to 10.0 KiB (100% less)",
                "51 files before, 0 now"
            ]
        );
        let strict = AnomalyRules {
            min_files: Some(10),
            ..Default::default()
        };
        assert_eq!(
            check(&vol(0, 0), None, &strict),
            ["0 files, fewer than min_files (10)"],
            "min_files holds on a first run too"
        );
        let redis = |keys: u64| {
            item(
                ItemKind::Redis,
                100,
                serde_json::json!({"keyspace": {"db0": {"keys": keys}}}),
            )
        };
        assert_eq!(
            check(&redis(0), Some(&redis(12)), &rules),
            ["redis db0: 12 keys before, 0 now"]
        );
    }
}
