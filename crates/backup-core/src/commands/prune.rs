//! `forget` by policy and `prune`: the retention plan, forgetting what it removes, then garbage
//! collection. The binaries render the report; the decisions are made here.

use serde::Serialize;

use crate::commands::gc::{GcOptions, GcReport, collect};
use crate::engines::postgres::wal::{WalPruneReport, prune_wal};
use crate::error::Result;
use crate::repository::{ForgetReport, Repository};
use crate::retention::{RetentionPlan, RetentionPolicy, plan};

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Forget what this policy removes (none: forget nothing).
    pub policy: Option<RetentionPolicy>,
    /// Then collect garbage with these options (none: `forget` only).
    pub gc: Option<GcOptions>,
    /// Plan and report only.
    pub dry_run: bool,
}

/// What was done (or, dry, would be).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<RetentionPlan>,
    /// What forgetting did (not set on a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forget: Option<ForgetReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcReport>,
    /// WAL no kept base backup needs, removed after the snapshots (prune only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalPruneReport>,
    /// Objects that could not be read, named: nothing was deleted on their account, and a
    /// person should look (`check --read-data`).
    pub damaged: Vec<String>,
    pub dry_run: bool,
}

impl PruneReport {
    /// The next step when damaged objects were found.
    pub fn hint(&self) -> Option<&'static str> {
        (!self.damaged.is_empty()).then_some(
            "nothing was deleted because it could not be read; run `lifeboat-backup check --read-data`, and forget snapshots that cannot be recovered",
        )
    }

    /// Adds what this prune did to its metrics (`lifeboat_prune_last_*{repository}`).
    pub fn metrics(&self, m: &mut crate::metrics::Metrics, repository: &str) {
        let forgotten = self.forget.as_ref().map_or(0, |f| f.forgotten.len());
        let kept = self.plan.as_ref().map_or(0, |p| {
            p.groups
                .iter()
                .flat_map(|g| &g.snapshots)
                .filter(|d| d.keep)
                .count()
        });
        let freed = self.gc.as_ref().map_or(0, |g| {
            g.bytes_deleted + g.pack_bytes_deleted + g.repack_bytes_freed
        }) + self.wal.as_ref().map_or(0, |w| w.removed_bytes);
        let figures = [
            (
                "snapshots_forgotten",
                "Snapshots the last prune forgot.",
                forgotten as f64,
            ),
            (
                "snapshots_kept",
                "Snapshots the last prune's policy kept.",
                kept as f64,
            ),
            (
                "freed_bytes",
                "Stored bytes the last prune deleted (chunks, packs, repacking, WAL).",
                freed as f64,
            ),
            (
                "damaged_objects",
                "Objects the last prune could not read (nothing deleted on their account).",
                self.damaged.len() as f64,
            ),
        ];
        for (name, help, v) in figures {
            m.gauge(
                &format!("lifeboat_prune_last_{name}"),
                help,
                &[("repository", repository)],
                v,
            );
        }
    }

    /// Process exit code: 0, or [`crate::error::EXIT_INTEGRITY`] when something is damaged
    /// (the run did what it could; a person must look at the rest).
    pub fn exit_code(&self) -> u8 {
        if self.damaged.is_empty() {
            0
        } else {
            crate::error::EXIT_INTEGRITY
        }
    }
}

/// Plans retention over the readable snapshots (a damaged one is kept and named), forgets
/// what the plan removes, then collects garbage.
pub async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let policy = opts.policy.as_ref().filter(|p| !p.is_empty());
    // GC reads the snapshots (and names damaged ones) itself, after the forget.
    if policy.is_some() || opts.gc.is_none() {
        let listing = repo.snapshot_listing().await?;
        report.damaged = listing.damaged.iter().map(|d| d.to_string()).collect();
        if let Some(policy) = policy {
            let planned = plan(
                policy,
                &listing.snapshots,
                &repo.protected().await?,
                chrono::Utc::now(),
            )?;
            if !opts.dry_run {
                report.forget = Some(repo.forget(&planned.remove()).await?);
            }
            report.plan = Some(planned);
        }
    }
    if let Some(gc) = &opts.gc {
        let gc = GcOptions {
            dry_run: opts.dry_run,
            ..gc.clone()
        };
        let r = collect(repo, &gc).await?;
        report.damaged = r.damaged.clone();
        report.gc = Some(r);
        // After the forget: the base backups that are left decide which WAL is still needed.
        let listing = repo.snapshot_listing().await?;
        let kept = if opts.dry_run {
            let removed = report.plan.as_ref().map(|p| p.remove()).unwrap_or_default();
            listing
                .snapshots
                .into_iter()
                .filter(|s| !removed.contains(&s.id))
                .collect()
        } else {
            listing.snapshots
        };
        report.wal = Some(prune_wal(repo, &kept, listing.damaged.len(), opts.dry_run).await?);
    }
    Ok(report)
}
