//! `[retention]`: the policy and GC settings, as the config file and the `--keep-*` flags
//! give them.

use serde::Deserialize;

use crate::commands::gc::GcOptions;
use crate::error::{Error, Result};
use crate::retention::{GroupBy, RetentionPolicy, parse_duration};

/// `[retention]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// `30d`, `48h`…
    pub keep_within: Option<String>,
    /// Point-in-time window (`7d`): the base backups a restore to any moment of it needs.
    pub keep_pitr: Option<String>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Any of `host`, `sources`, `tags` (default host and sources).
    pub group_by: Option<Vec<String>>,
    /// Fixed offset for calendar buckets, e.g. `+02:00` (default UTC).
    pub timezone: Option<String>,
    /// Collect garbage after forgetting (default true).
    pub prune: Option<bool>,
    /// Grace period of unreferenced chunks (default 24h).
    pub grace: Option<String>,
    /// Percent of pack bytes GC may leave unreferenced before it rewrites the emptiest packs
    /// (default 10; 100 never repacks).
    pub max_unused: Option<u8>,
    /// Markers (of backups and GCs) not refreshed for this long belong to dead processes and
    /// are ignored (default 1h): after a killed run, prune defers until then.
    #[serde(default)]
    pub stale_after: Option<String>,
}

impl RetentionConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> Result<RetentionPolicy> {
        let group_by = match &self.group_by {
            None => GroupBy::default(),
            Some(list) => {
                let mut g = GroupBy {
                    host: false,
                    sources: false,
                    tags: false,
                };
                for k in list {
                    match k.as_str() {
                        "host" => g.host = true,
                        "sources" => g.sources = true,
                        "tags" => g.tags = true,
                        other => {
                            return Err(Error::Usage(format!(
                                "group_by: unknown key {other:?} (host, sources, tags)"
                            )));
                        }
                    }
                }
                g
            }
        };
        let timezone = match &self.timezone {
            None => None,
            Some(tz) => Some(tz.parse::<chrono::FixedOffset>().map_err(|_| {
                Error::Usage(format!(
                    "timezone {tz:?}: use a fixed offset such as +02:00"
                ))
            })?),
        };
        Ok(RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .as_deref()
                .map(parse_duration)
                .transpose()?,
            keep_pitr: self.keep_pitr.as_deref().map(parse_duration).transpose()?,
            keep_tags: self.keep_tags.clone(),
            group_by,
            timezone,
        })
    }

    /// GC options from `grace` and `max_unused`.
    pub fn gc_options(&self) -> Result<GcOptions> {
        let mut o = GcOptions::default();
        if let Some(g) = &self.grace {
            o.grace = parse_duration(g)?.to_std().unwrap_or_default();
        }
        if let Some(s) = &self.stale_after {
            o.stale_after = parse_duration(s)?.to_std().unwrap_or_default();
            if o.stale_after < std::time::Duration::from_secs(60) {
                return Err(Error::Usage(format!(
                    "stale_after {s}: at least 1m (live processes refresh their markers every minute)"
                )));
            }
        }
        if let Some(p) = self.max_unused {
            if p > 100 {
                return Err(Error::Usage(format!(
                    "max_unused {p}: a percentage from 0 to 100"
                )));
            }
            o.max_unused = f64::from(p) / 100.0;
        }
        Ok(o)
    }
}
