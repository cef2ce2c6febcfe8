//! Engines: one folder per kind of data, each with its source (backup side), its restore
//! targets, its typed facts and, where it has one, its scratch server for drills.
//!
//! A new engine is a new folder here plus its arm in [`crate::manifest::ItemKind`], the restore
//! target choice (`commands::restore::default_target`) and the config's `SourceConfig`.

pub mod command;
pub mod postgres;
pub mod redis;
pub mod volume;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

use crate::manifest::Facts;

/// What an engine's drill check found: a summary when it holds, what differs when it does not.
pub type CheckOutcome = std::result::Result<String, String>;

/// Reads an engine's typed view of an item's facts. Each field is read on its own: a fact that
/// is missing or of another type (an older build wrote it differently) reads as absent instead
/// of hiding the others.
pub(crate) fn read_facts<T: DeserializeOwned + Default>(facts: &Facts) -> T {
    let map: serde_json::Map<String, serde_json::Value> =
        facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    serde_json::from_value(serde_json::Value::Object(map)).unwrap_or_default()
}

/// Writes an engine's typed facts as the manifest's map (the same keys and values as before
/// facts were typed, so the format does not change).
pub(crate) fn write_facts<T: Serialize>(facts: &T) -> Facts {
    match serde_json::to_value(facts) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
        _ => Facts::new(),
    }
}

/// `#[serde(deserialize_with)]` for typed facts: a value of the wrong type reads as `None`.
pub(crate) fn lenient<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}
