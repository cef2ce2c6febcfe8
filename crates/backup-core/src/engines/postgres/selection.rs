//! Which tables a partial PostgreSQL restore takes: `--table [SCHEMA.]NAME` and `--schema`,
//! resolved against the tables the backup recorded, into `pg_restore`'s `-n`/`-t` flags.
//!
//! `pg_restore -t` takes a bare name and `-n` a schema, matched independently: asking for
//! `billing.invoices` and `public.orders` as `-n billing -n public -t invoices -t orders` would
//! also restore `billing.orders` if it exists. The selection is checked against the backup's
//! table list so that what pg_restore restores is exactly what was asked for, or the restore
//! is refused before anything is touched.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::manifest::Item;

use super::facts::PostgresFacts;

/// A resolved table selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSelection {
    /// `-n` flags (schemas the restore writes into; created first when missing).
    pub schemas: BTreeSet<String>,
    /// `-t` flags (bare table names).
    pub names: BTreeSet<String>,
    /// The `(schema, table)` pairs restored, when the backup recorded its tables.
    pub tables: BTreeSet<(String, String)>,
}

impl TableSelection {
    /// Resolves `--table` and `--schema` for `item`. Fails, naming what the backup has, when
    /// a table is not in it or when pg_restore would restore more than was asked for.
    pub fn resolve(item: &Item, tables: &[String], schemas: &[String]) -> Result<TableSelection> {
        if tables.is_empty() && schemas.is_empty() {
            return Ok(TableSelection::default());
        }
        let known: Option<BTreeSet<(String, String)>> = PostgresFacts::of(item)
            .row_counts
            .map(|c| c.keys().filter_map(|k| split(k)).collect());
        let wanted: Vec<(Option<String>, String)> = tables
            .iter()
            .map(|t| match split(t) {
                Some((s, n)) => (Some(s), n),
                None => (None, t.clone()),
            })
            .collect();
        let Some(known) = known else {
            // An old snapshot without a table list: pass the names through unchecked.
            return Ok(TableSelection {
                schemas: wanted
                    .iter()
                    .filter_map(|(s, _)| s.clone())
                    .chain(schemas.iter().cloned())
                    .collect(),
                names: wanted.into_iter().map(|(_, n)| n).collect(),
                tables: BTreeSet::new(),
            });
        };
        let in_schemas = |s: &str| schemas.is_empty() || schemas.iter().any(|x| x == s);
        let mut sel = TableSelection::default();
        if wanted.is_empty() {
            sel.schemas = schemas.iter().cloned().collect();
            sel.tables = known
                .iter()
                .filter(|(s, _)| in_schemas(s))
                .cloned()
                .collect();
            return Ok(sel);
        }
        for (schema, name) in &wanted {
            let hits: Vec<&(String, String)> = known
                .iter()
                .filter(|(s, n)| {
                    n == name && schema.as_deref().map_or(in_schemas(s), |want| s == want)
                })
                .collect();
            if hits.is_empty() {
                return Err(Error::Usage(format!(
                    "item {}: the backup has no table {} (it has: {})",
                    item.name,
                    schema
                        .as_ref()
                        .map_or(name.clone(), |s| format!("{s}.{name}")),
                    list(known.iter())
                )));
            }
            sel.tables.extend(hits.into_iter().cloned());
        }
        sel.names = sel.tables.iter().map(|(_, n)| n.clone()).collect();
        let qualified = !schemas.is_empty() || wanted.iter().any(|(s, _)| s.is_some());
        if qualified {
            sel.schemas = sel.tables.iter().map(|(s, _)| s.clone()).collect();
        }
        sel.refuse_extras(item, &known)
    }

    /// pg_restore matches `-n` and `-t` independently: refuse when that takes more tables
    /// than were asked for.
    fn refuse_extras(self, item: &Item, known: &BTreeSet<(String, String)>) -> Result<Self> {
        let extras: Vec<&(String, String)> = known
            .iter()
            .filter(|(s, n)| {
                (self.schemas.is_empty() || self.schemas.contains(s))
                    && self.names.contains(n)
                    && !self.tables.contains(&(s.clone(), n.clone()))
            })
            .collect();
        if extras.is_empty() {
            return Ok(self);
        }
        Err(Error::Usage(format!(
            "item {}: pg_restore matches schemas and table names separately, so this selection would also restore {}; restore those tables in separate runs",
            item.name,
            list(extras.into_iter())
        )))
    }

    /// Whether a restore of the whole database was asked for.
    pub fn is_whole(&self) -> bool {
        self.schemas.is_empty() && self.names.is_empty()
    }

    /// Whether `schema.table` is restored (everything, for a whole-database restore).
    pub fn takes(&self, schema: &str, table: &str) -> bool {
        if self.is_whole() {
            return true;
        }
        if !self.tables.is_empty() {
            return self
                .tables
                .contains(&(schema.to_string(), table.to_string()));
        }
        (self.schemas.is_empty() || self.schemas.contains(schema))
            && (self.names.is_empty() || self.names.contains(table))
    }
}

fn split(qualified: &str) -> Option<(String, String)> {
    qualified
        .split_once('.')
        .map(|(s, n)| (s.to_string(), n.to_string()))
}

fn list<'a>(tables: impl Iterator<Item = &'a (String, String)>) -> String {
    let all: Vec<String> = tables.map(|(s, n)| format!("{s}.{n}")).collect();
    if all.is_empty() {
        return "no tables".into();
    }
    all.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(tables: &[&str]) -> Item {
        let counts: serde_json::Map<String, serde_json::Value> =
            tables.iter().map(|t| (t.to_string(), 1.into())).collect();
        serde_json::from_value(serde_json::json!({
            "name": "pg.app", "kind": "postgres", "format": "pg_dump-custom", "size": 0,
            "sha256": "", "chunks": [], "started": "2026-01-01T00:00:00Z",
            "finished": "2026-01-01T00:00:00Z",
            "facts": {"row_counts": counts, "row_counts_exact": true}
        }))
        .unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn qualified_names_become_schema_and_table_flags() {
        let it = item(&["public.orders", "billing.invoices", "billing.orders"]);
        let s = TableSelection::resolve(&it, &strings(&["billing.invoices"]), &[]).unwrap();
        assert_eq!(s.schemas, set(&["billing"]));
        assert_eq!(s.names, set(&["invoices"]));
        assert!(s.takes("billing", "invoices") && !s.takes("public", "orders"));
        let bare = TableSelection::resolve(&it, &strings(&["orders"]), &[]).unwrap();
        assert!(
            bare.schemas.is_empty(),
            "a bare name is every schema's, as in pg_restore"
        );
        assert_eq!(bare.tables.len(), 2);
        let one = TableSelection::resolve(&it, &strings(&["orders"]), &strings(&["billing"]));
        assert_eq!(one.unwrap().tables.len(), 1);
    }

    #[test]
    fn a_table_not_in_the_backup_or_a_selection_taking_more_is_refused() {
        let it = item(&["public.orders", "billing.invoices", "billing.orders"]);
        let e = TableSelection::resolve(&it, &strings(&["billing.nope"]), &[]).unwrap_err();
        assert!(e.to_string().contains("billing.invoices"), "{e}");
        let e = TableSelection::resolve(&it, &strings(&["billing.invoices", "public.orders"]), &[])
            .unwrap_err();
        assert!(e.to_string().contains("also restore billing.orders"), "{e}");
    }
}
